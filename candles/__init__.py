"""Candles: the value type and the aggregator that builds them from ticks. Pure logic, no I/O."""

from candles.model import Candle, Interval, parse_intervals
from core.ist import IST

__all__ = ["IST", "Candle", "Interval", "parse_intervals"]
