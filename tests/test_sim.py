from decimal import Decimal

from brokers.sim.client import SimBroker, SimClock, read_tape, write_tape
from core.ist import ist_date
from core.ticks import Instrument

START = 1_795_491_900.0  # 2026-11-24 09:15 IST
SYMBOLS = [Instrument("NSE", "INFY"), Instrument("NSE", "TCS"), Instrument("NSE", "NIFTY 50")]


def _ticks(seed: int, until: float, start: float = START):
    broker = SimBroker(SimClock(start, 1.0), seed=seed)
    broker.subscribe(SYMBOLS)
    return broker.due_ticks(until)


def test_same_seed_gives_the_same_ticks_and_another_seed_does_not():
    a = _ticks(7, START + 600)
    b = _ticks(7, START + 600)
    c = _ticks(8, START + 600)
    assert a == [t for t in b]
    assert [t.last_price for t in a] != [t.last_price for t in c]


def test_ticks_do_not_depend_on_how_they_are_polled():
    broker = SimBroker(SimClock(START, 1.0), seed=3)
    broker.subscribe(SYMBOLS)
    polled = []
    for step in range(1, 61):
        polled += broker.due_ticks(START + step * 10)
    assert [(t.symbol, t.exchange_ts, t.last_price) for t in polled] == [
        (t.symbol, t.exchange_ts, t.last_price) for t in _ticks(3, START + 600)
    ]


def test_prices_sit_on_the_tick_grid_and_volume_is_cumulative():
    ticks = _ticks(1, START + 3600)
    assert len(ticks) > 3 * 3000  # about one tick per second per symbol
    for t in ticks:
        assert t.last_price > 0
        assert t.last_price % Decimal("0.05") == 0
    infy = [t for t in ticks if t.symbol == "INFY"]
    volumes = [t.volume for t in infy]
    assert volumes == sorted(volumes)
    trades = sum(1 for a, b in zip(infy, infy[1:]) if b.volume > a.volume)
    quotes = sum(1 for a, b in zip(infy, infy[1:]) if b.volume == a.volume)
    assert trades > 0 and quotes > 0  # a mix of trades and quote-only updates
    assert all(t.volume is None for t in ticks if t.symbol == "NIFTY 50")


def test_exchange_timestamps_follow_the_given_clock_in_order():
    ticks = _ticks(2, START + 120)
    stamps = [t.exchange_ts.timestamp() for t in ticks]
    assert stamps == sorted(stamps)
    assert START <= stamps[0] and stamps[-1] <= START + 120
    assert all(t.exchange_ts.utcoffset().total_seconds() == 19_800 for t in ticks)


def test_cumulative_volume_restarts_on_a_new_day():
    late = START + 14 * 3600 + 40 * 60  # 23:55 IST
    ticks = _ticks(4, late + 600, start=late)
    infy = [t for t in ticks if t.symbol == "INFY"]
    days = {ist_date(t.exchange_ts.timestamp()) for t in infy}
    assert len(days) == 2
    first_next_day = next(t for t in infy if ist_date(t.exchange_ts.timestamp()) != ist_date(late))
    assert first_next_day.volume < infy[0].volume


def test_speed_factor_plays_an_hour_per_wall_minute():
    wall = [0.0]
    clock = SimClock(START, 60.0, monotonic=lambda: wall[0])
    wall[0] = 60.0
    assert clock() == START + 3600


def test_tape_round_trips_ticks(tmp_path):
    ticks = _ticks(5, START + 60)
    path = tmp_path / "tape.jsonl"
    with path.open("w") as out:
        write_tape(out, ticks)
    back = read_tape(path)
    assert [(t.symbol, t.last_price, t.volume, t.exchange_ts) for t in back] == [
        (t.symbol, t.last_price, t.volume, t.exchange_ts) for t in ticks
    ]


def test_a_restarted_simulator_continues_the_same_stream():
    full = _ticks(9, START + 900)
    for restart in (START + 300, START + 307.431, START + 899.5):  # on a chunk boundary, inside chunks
        later = _ticks(9, START + 900, start=restart)
        tail = [t for t in full if t.exchange_ts.timestamp() >= restart]
        assert [(t.symbol, t.exchange_ts, t.last_price, t.volume) for t in later] == [
            (t.symbol, t.exchange_ts, t.last_price, t.volume) for t in tail
        ]


def test_equal_prices_are_one_shared_object_as_the_broker_decoders_hand_them_over():
    ticks = _ticks(6, START + 600)
    by_value: dict[Decimal, set[int]] = {}
    for t in ticks:
        by_value.setdefault(t.last_price, set()).add(id(t.last_price))
    assert len(by_value) < len(ticks) / 4  # prices repeat on a random walk
    assert all(len(ids) == 1 for ids in by_value.values())


def test_a_stop_does_not_wait_for_a_large_watchlists_backlog_of_ticks():
    import threading
    import time

    now = [START]
    broker = SimBroker(lambda: now[0], seed=4)
    broker.subscribe([Instrument("NSE", f"SYN{i}") for i in range(2000)])
    now[0] = START + 300  # the preparation took a while: 600,000 ticks are due at the first call
    calls = threading.Event()
    asked = time.monotonic()
    broker.connect(lambda batch: calls.set())
    took = time.monotonic() - asked
    assert took < 1.0, f"connect waited {took:.1f} s for the feed thread's first batch"
    time.sleep(0.3)  # the feed thread is making them

    asked = time.monotonic()
    broker.disconnect()
    took = time.monotonic() - asked
    assert took < 1.0, f"the stop waited {took:.1f} s for the feed thread"
    assert not broker.is_connected()
