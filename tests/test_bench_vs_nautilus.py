"""The tick file of bench/vs_nautilus.py: both sides must aggregate the identical trades."""

from __future__ import annotations

from bench.vs_nautilus import generate, read_ticks, seconds_of


def test_tick_file_is_deterministic_and_holds_trades_only(tmp_path):
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    count = generate(first, symbols=20, minutes=1)
    assert generate(second, symbols=20, minutes=1) == count > 0
    assert first.read_bytes() == second.read_bytes()

    symbols, cols = read_ticks(first)
    assert symbols == 20 and len(cols["symbol"]) == count
    last: dict[int, int] = {}
    for sym, size, volume in zip(cols["symbol"], cols["size"], cols["volume"], strict=True):
        assert size > 0  # a Nautilus trade needs a positive size
        if sym in last:
            assert volume - last[sym] == size  # every row a trade: the cumulative volume rose by its size
        last[sym] = volume


def test_seconds_cover_every_trade_once_in_time_order(tmp_path):
    path = tmp_path / "t.bin"
    generate(path, symbols=20, minutes=1)
    _, cols = read_ticks(path)
    groups = seconds_of(cols)
    assert [sec for sec, _, _ in groups] == sorted({*cols["second"]})
    assert groups[0][1] == 0 and groups[-1][2] == len(cols["second"])
    for (sec, lo, hi), (_, nxt, _) in zip(groups, groups[1:] + [(0, len(cols["second"]), 0)], strict=True):
        assert hi == nxt and set(cols["second"][lo:hi]) == {sec}
