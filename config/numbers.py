"""The numbers a setting or a command-line option accepts: finite, whole where it counts, in range.

One check for both: ``config.env`` reads variables with it, and the options' ``type=`` is
``Range(...).option`` so that ``--duration nan`` is refused by argparse (exit 2) naming the option.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Range:
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False  # the minimum itself is not allowed (``> minimum``)
    whole: bool = False
    unit: str = ""  # "seconds": shown in the description

    def describe(self) -> str:
        """``a whole number from 1 to 65535``, ``a number of seconds greater than 0`` ..."""
        noun = ("a whole number" if self.whole else "a number") + (f" of {self.unit}" if self.unit else "")
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return f"{noun} {'greater than' if self.above else 'from'} {low:g} {'and at most' if self.above else 'to'} {high:g}"
        if low is not None:
            return f"{noun} {'greater than' if self.above else 'of at least'} {low:g}"
        if high is not None:
            return f"{noun} of at most {high:g}"
        return noun

    def parse(self, text: str) -> int | float:
        """The number ``text`` says; ``ValueError`` naming the allowed range for anything else
        (NaN, infinities, a fraction where a whole number is wanted, out of range)."""
        wrong = ValueError(f"{text.strip()!r} is not {self.describe()}")
        try:
            number = float(text)
        except ValueError:
            raise wrong from None
        if not math.isfinite(number) or (self.whole and number != int(number)):
            raise wrong
        low, high = self.minimum, self.maximum
        if low is not None and (number <= low if self.above else number < low):
            raise wrong
        if high is not None and number > high:
            raise wrong
        return int(number) if self.whole else number

    def option(self, text: str) -> int | float:
        """For argparse's ``type=``: the option's error names the allowed range."""
        try:
            return self.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None


PORT = Range(1, 65535, whole=True)
