#!/usr/bin/env python3
"""marketfeed: stream market data, build OHLCV candles, store them.

Entry point only: parse the command line and hand over to cli/.
"""

from __future__ import annotations

import sys

from cli.app import main

if __name__ == "__main__":
    sys.exit(main())
