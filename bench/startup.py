"""Start-up at scale and stops during start-up, with main.py as a process (the simulator, SQLite).

    .venv/bin/python -m bench.startup [--symbols 20000] [--stop-symbols 100000] [--at 1,3,10] [--ref REF] [--cap 120]

Two figures:

- time to first tick: from the process start to the first tick written to ``--sim-tape`` with
  ``--symbols`` simulated symbols, simulated time 14:30 IST (late in the day: a simulator that
  replays the day from midnight pays for every hour before the start);
- stop time: SIGTERM ``--at`` seconds after the process started, with ``--stop-symbols`` symbols
  (a start-up that lasts several seconds), to the process's exit; with the exit status and the
  line that says which phase the stop interrupted.

``--ref REF`` runs the same against the code of a git ref (exported to a temporary directory)
as well, e.g. the commit before a change; every run is capped at ``--cap`` seconds (a capped run
prints "> cap").
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIM_START = "2026-11-24T14:30:00+05:30"


def _daemon(code: Path, cwd: Path, symbols: int, tape: Path | None) -> subprocess.Popen:
    path = cwd / f"symbols-{symbols}.txt"
    if not path.exists():
        path.write_text("\n".join(f"NSE:SYM{i:06d}" for i in range(symbols)) + "\n")
    args = [sys.executable, str(code / "main.py"), "--broker", "sim", "--symbols-file", str(path), "--sim-start", SIM_START]
    if tape is not None:
        args += ["--sim-tape", str(tape)]
    data = cwd / "data"
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(data), "SQLITE_PATH": str(data / "marketfeed.db")}
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _end(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.kill()
    _, err = proc.communicate()
    return err


def first_tick(code: Path, symbols: int, cap: float) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        tape = cwd / "tape.jsonl"
        started = time.monotonic()
        proc = _daemon(code, cwd, symbols, tape)
        try:
            while time.monotonic() - started < cap:
                if tape.exists() and tape.stat().st_size > 0:
                    return f"{time.monotonic() - started:.1f} s"
                if proc.poll() is not None:
                    return f"exited with {proc.returncode} before a tick"
                time.sleep(0.05)
            return f"> {cap:.0f} s (capped)"
        finally:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            _end(proc)


def stop_time(code: Path, symbols: int, at: float, cap: float) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        started = time.monotonic()
        proc = _daemon(code, cwd, symbols, None)
        time.sleep(max(0.0, at - (time.monotonic() - started)))
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        try:
            proc.wait(cap)
            took = f"{time.monotonic() - sent:.2f} s, status {proc.returncode}"
        except subprocess.TimeoutExpired:
            took = f"> {cap:.0f} s (capped, killed)"
        err = _end(proc)
        said = next((line.split(": ", 1)[-1] for line in err.splitlines() if "received SIGTERM" in line), "no line")
        return f"{took}; {said}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=20_000, help="symbols for the time to first tick")
    ap.add_argument("--stop-symbols", type=int, default=100_000, help="symbols for the stop times")
    ap.add_argument("--at", default="1,3,10", help="seconds after the start to send SIGTERM")
    ap.add_argument("--ref", help="also run the code of this git ref (e.g. the commit before a change)")
    ap.add_argument("--cap", type=float, default=120.0, help="seconds after which a run is cut short")
    args = ap.parse_args()

    codes = [("this tree", ROOT)]
    exported = None
    if args.ref:
        exported = tempfile.TemporaryDirectory()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", exported.name], input=archive, check=True)
        codes.append((args.ref, Path(exported.name)))
    try:
        for name, code in codes:
            print(f"{name}: time to first tick, {args.symbols} simulated symbols: {first_tick(code, args.symbols, args.cap)}")
            for at in (float(x) for x in args.at.split(",")):
                result = stop_time(code, args.stop_symbols, at, args.cap)
                print(f"{name}: SIGTERM {at:.0f} s into the start-up ({args.stop_symbols} symbols): stopped in {result}")
    finally:
        if exported is not None:
            exported.cleanup()


if __name__ == "__main__":
    main()
