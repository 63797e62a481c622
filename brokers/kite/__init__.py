"""Zerodha Kite Connect: the KiteTicker wire protocol (``protocol.py``) and, beside it, the feed client."""
