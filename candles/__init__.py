"""Candles: the value type and the aggregator that builds them from ticks. Pure logic, no I/O."""

from candles.model import IST, Candle, Interval, parse_intervals

__all__ = ["IST", "Candle", "Interval", "parse_intervals"]
