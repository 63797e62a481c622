"""Candles: the value type, intervals, the aggregator that builds them from ticks and its snapshot format.
Pure logic, no I/O."""
