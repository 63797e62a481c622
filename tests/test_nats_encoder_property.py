"""The compiled tick encoder (publishers/_speedups.pyx) against the reference ``PythonTickEncoder``.

Both encode the same random tick sequences, batch by batch, and must write the same PUB commands,
give the same ``encode`` results and keep the same caches: symbols and exchanges that need
escaping, prices of any exponent (and the special values), quantities, volumes and OI on either
side of the kept texts and of a C long long, None, booleans, exchange and receive times shared as
one object or repeated as equal copies, in other time zones, a token that changes, a subject
prefix that is not ASCII, ticks of another type than ``TickData``. No server needed.
"""

from __future__ import annotations

import importlib
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import accel
from core.ist import IST
from core.ticks import TickData
from publishers.nats import _SMALL, PythonTickEncoder


def _compiled_encoder() -> type:
    """The compiled encoder whenever it is built from the sources on disk (MARKETFEED_PURE_PYTHON
    or not: this test is about the compiled code)."""
    try:
        module = importlib.import_module("publishers._speedups")
    except ImportError as exc:
        pytest.skip(f"publishers._speedups is not built ({exc}): run scripts/build_ext.py")
    if accel.source_digest(module.SOURCES) != module.SOURCE_DIGEST:
        pytest.skip("publishers._speedups is built from older sources: run scripts/build_ext.py")
    return module.compiled_encoder(PythonTickEncoder, _SMALL)


class _Tick(TickData):
    """Not a ``TickData`` itself: the compiled encoder reads its fields by attribute lookup."""

    __slots__ = ()


ZONES = (IST, timezone.utc, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=45)))

names = st.one_of(
    st.sampled_from(["NIFTY 50", "M&M", "A_B", "RELIANCE", "BANKNIFTY25DECFUT", "x.y*z>", "Ünï"]),
    st.text(min_size=1, max_size=12),
)
exchanges = st.one_of(st.sampled_from(["NSE", "BSE", "MCX", "NFO"]), st.text(min_size=1, max_size=5))
prices = st.one_of(
    st.builds(lambda m, e: Decimal(f"{m}E{e}"), st.integers(-(10**15), 10**15), st.integers(-10, 8)),
    st.decimals(allow_nan=True, allow_infinity=True),
)
quantities = st.one_of(
    st.none(),
    st.integers(-3, 4100),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 4095, 4096, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1]),
    st.booleans(),
)
moments = st.builds(
    lambda at, zone: at.replace(tzinfo=timezone.utc).astimezone(zone),
    st.datetimes(min_value=datetime(1950, 1, 1), max_value=datetime(2200, 1, 1)),
    st.sampled_from(ZONES),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[str, list[list[TickData]]]:
    """A prefix and batches of ticks over a few instruments, times drawn from a small pool."""
    prefix = draw(st.sampled_from(["marketfeed", "prod.mf", "bus.ü"]))
    instruments = draw(st.lists(st.tuples(exchanges, names), min_size=1, max_size=6))
    pool = draw(st.lists(moments, min_size=1, max_size=5))
    picks = st.integers(0, len(pool) - 1)

    def time_of(i: int, copy: bool) -> datetime:
        # the same object (as a decoder shares a second's time) or an equal one of its own
        return pool[i] + timedelta(0) if copy else pool[i]

    ticks = []
    for _ in range(draw(st.integers(1, 60))):
        exchange, symbol = draw(st.sampled_from(instruments))
        ticks.append(
            draw(st.sampled_from([TickData, _Tick]))(
                "prop", exchange, symbol, draw(st.sampled_from([7, 8, 256265])), draw(prices), draw(quantities),
                draw(quantities), draw(quantities), time_of(draw(picks), draw(st.booleans())),
                time_of(draw(picks), draw(st.booleans())),
            )
        )  # fmt: skip
    cuts = sorted(draw(st.lists(st.integers(0, len(ticks)), max_size=6)))
    edges = [0, *cuts, len(ticks)]
    return prefix, [ticks[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def _state(encoder: PythonTickEncoder) -> tuple:
    return encoder._heads, encoder._seconds, encoder._received, encoder._times


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_the_compiled_encoder_writes_what_the_reference_writes(scenario):
    compiled_type = _compiled_encoder()
    prefix, batches = scenario
    compiled, reference = compiled_type(prefix), PythonTickEncoder(prefix)
    for batch in batches:
        got: list[str] = []
        expected: list[str] = []
        compiled.encode_batch(batch, got)
        reference.encode_batch(batch, expected)
        assert got == expected
        assert all(type(command) is str for command in got)
        assert _state(compiled) == _state(reference)
        if batch:
            assert compiled.encode(batch[-1]) == reference.encode(batch[-1])


def test_the_compiled_encoder_is_the_default_when_built():
    compiled_type = _compiled_encoder()
    import publishers.nats

    assert compiled_type.compiled
    if not accel.forced_pure():
        assert getattr(publishers.nats.TickEncoder, "compiled", False)
    else:
        assert publishers.nats.TickEncoder is PythonTickEncoder


def test_a_tick_missing_a_field_fails_alike():
    compiled_type = _compiled_encoder()
    at = datetime(2026, 11, 24, 9, 15, 3, tzinfo=IST)
    full = TickData("prop", "NSE", "M&M", 7, Decimal("100.5"), 1, 2, 3, at, at)
    for name in ("symbol", "volume", "last_price"):
        partial = object.__new__(TickData)
        for field in ("broker", "exchange", "symbol", "token", "last_price", "last_quantity", "volume", "oi",
                      "exchange_ts", "receive_ts", "depth"):  # fmt: skip
            if field != name:
                object.__setattr__(partial, field, getattr(full, field))
        for encoder in (compiled_type("marketfeed"), PythonTickEncoder("marketfeed")):
            with pytest.raises(AttributeError, match=name):
                encoder.encode_batch([full, partial], [])
