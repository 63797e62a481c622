"""core.accel: a compiled twin runs only when it imports and was built from the sources on disk."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from core import accel

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_choices(monkeypatch):
    monkeypatch.setattr(accel, "_choices", {})
    monkeypatch.delenv(accel.ENV, raising=False)


def _fake_build(monkeypatch, name: str, digest: str) -> None:
    module = types.ModuleType(name)
    module.SOURCES = ("core/accel.py",)
    module.SOURCE_DIGEST = digest
    monkeypatch.setitem(sys.modules, name, module)


def test_a_build_of_the_sources_on_disk_runs(fresh_choices, monkeypatch):
    _fake_build(monkeypatch, "fake_twin_ok", accel.source_digest(("core/accel.py",)))
    assert accel.load("fake_twin_ok") is sys.modules["fake_twin_ok"]
    assert accel.report() == (False, "hot path: compiled (fake_twin_ok)")


def test_a_build_older_than_its_sources_is_not_used_and_the_report_says_so(fresh_choices, monkeypatch):
    _fake_build(monkeypatch, "fake_twin_stale", "0" * 64)
    assert accel.load("fake_twin_stale") is None
    warn, line = accel.report()
    assert warn
    assert "fake_twin_stale built from older sources" in line and "scripts/bootstrap.sh" in line


def test_a_module_not_built_falls_back_with_a_warning(fresh_choices):
    assert accel.load("candles._no_such_twin") is None
    warn, line = accel.report()
    assert warn and "candles._no_such_twin not built" in line and "C compiler" in line


def test_the_pure_path_asked_for_is_not_a_warning(fresh_choices, monkeypatch):
    _fake_build(monkeypatch, "fake_twin_forced", accel.source_digest(("core/accel.py",)))
    monkeypatch.setenv(accel.ENV, "1")
    assert accel.load("fake_twin_forced") is None
    assert accel.report() == (False, f"hot path: pure Python ({accel.ENV} is set)")


def test_the_digest_covers_every_source_and_its_name():
    one = accel.source_digest(("core/accel.py",))
    assert accel.source_digest(("core/accel.py", "core/ist.py")) != one
    assert accel.source_digest(("core/ist.py",)) != one


@pytest.mark.parametrize("pure", ["", "1"])
def test_each_module_runs_its_chosen_path(pure):
    """The aggregator, the Kite and Kotak decoders and the NATS encoder follow MARKETFEED_PURE_PYTHON, in a fresh process."""
    code = (
        "import candles.aggregator as a, brokers.kite.protocol as k, publishers.nats as n, brokers.kotak_neo.protocol as kn; "
        "from core import accel; "
        "print(a.CandleAggregator.compiled, k.KiteDecoder is not k.PythonKiteDecoder, n.TickEncoder is not n.PythonTickEncoder, "
        "kn.KotakDecoder is not kn.PythonKotakDecoder); "
        "print(accel.report()[1])"
    )
    env = {"PATH": "/usr/bin:/bin", accel.ENV: pure}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    paths, line = out.splitlines()
    if pure:
        assert paths.split() == ["False", "False", "False", "False"]
        assert line == f"hot path: pure Python ({accel.ENV} is set)"
    else:
        if "not built" in line:
            pytest.skip(f"the compiled hot path is not built here: {line}")
        assert paths.split() == ["True", "True", "True", "True"]
        assert line == (
            "hot path: compiled (candles._speedups, brokers.kite._speedups, publishers._speedups, brokers.kotak_neo._speedups)"
        )


@pytest.mark.slow
def test_the_daemon_says_which_hot_path_runs(tmp_path):
    from testkit.cli import main_env, run_main

    forced = run_main("--broker", "sim", "--symbols", "NSE:INFY", "--duration", "1", cwd=tmp_path, env=main_env(**{accel.ENV: "1"}))
    assert forced.returncode == 0, forced.stderr
    assert f"INFO    marketfeed: hot path: pure Python ({accel.ENV} is set)" in forced.stderr

    default = run_main("--broker", "sim", "--symbols", "NSE:INFY", "--duration", "1", cwd=tmp_path, env=main_env(**{accel.ENV: ""}))
    assert default.returncode == 0, default.stderr
    line = next(x for x in default.stderr.splitlines() if "hot path:" in x)
    if "not built" in line:
        assert "WARNING" in line and "scripts/bootstrap.sh" in line
    else:
        assert "INFO    marketfeed: hot path: compiled (candles._speedups" in line
