"""The command line: argparse and dispatch, the daemon's wiring, the checks, the Kite login, views."""
