import re
from pathlib import Path

import pytest

from cli.settings import load_settings, venue_settings
from config.env import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_use_sqlite_and_one_minute_candles():
    s = load_settings({}, env_file=None)
    assert s.storage.pg_conn_str is None
    assert s.storage.sqlite_path == "data/marketfeed.db"
    assert s.candles.intervals == "1m"
    assert s.candles.grace_seconds == 2.0


def test_environment_wins_over_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("CANDLE_GRACE_SECONDS=5\nSQLITE_PATH=/tmp/from-file.db\n")
    s = load_settings({"CANDLE_GRACE_SECONDS": "3"}, env_file=env_file)
    assert s.candles.grace_seconds == 3.0
    assert s.storage.sqlite_path == "/tmp/from-file.db"


def test_every_invalid_variable_is_named_in_one_error():
    with pytest.raises(ConfigError) as err:
        load_settings(
            {
                "CANDLE_GRACE_SECONDS": "soon",
                "CANDLE_INTERVALS": "7x",
                "LOG_FORMAT": "xml",
                "CANDLE_EMIT_EMPTY": "maybe",
                "KITE_MODE": "fast",
            },
            env_file=None,
        )
    text = str(err.value)
    for name in ("CANDLE_GRACE_SECONDS", "CANDLE_INTERVALS", "LOG_FORMAT", "CANDLE_EMIT_EMPTY", "KITE_MODE"):
        assert name in text


def test_kotak_validation_lists_every_missing_variable():
    s = load_settings({"KOTAK_MPIN": "12ab"}, env_file=None)
    with pytest.raises(ConfigError) as err:
        venue_settings(s, "kotak")
    text = str(err.value)
    for name in ("KOTAK_CONSUMER_KEY", "KOTAK_MOBILE_NUMBER", "KOTAK_UCC", "KOTAK_TOTP_SECRET"):
        assert f"{name} is missing" in text
    assert "KOTAK_MPIN is invalid" in text
    assert "12ab" not in text  # the MPIN itself is a secret


def test_kite_needs_api_key_and_sim_needs_nothing():
    s = load_settings({}, env_file=None)
    venue_settings(s, "sim")
    with pytest.raises(ConfigError, match="KITE_API_KEY is missing"):
        venue_settings(s, "kite")


def test_secrets_are_redacted_in_repr_and_str():
    secrets = {
        "PG_CONN_STR": "postgresql://u:pg-s3cret@h/db",
        "KITE_API_SECRET": "kite-s3cret",
        "KITE_ACCESS_TOKEN": "tok-s3cret",
        "KOTAK_CONSUMER_KEY": "ck-s3cret",
        "KOTAK_MPIN": "654321",
        "KOTAK_TOTP_SECRET": "JBSWY3DPEHPK3PXP",
        "KOTAK_MOBILE_NUMBER": "+919876543210",
    }
    s = load_settings(secrets, env_file=None)
    for text in (repr(s), str(s), f"{s}"):
        for value in secrets.values():
            assert value not in text
    assert "kotak_neo=Settings(" in repr(s) and "mpin='***'" in repr(s)


def test_env_example_documents_every_variable_the_code_reads():
    declared = [ROOT / "config" / "settings.py", *sorted((ROOT / "brokers").glob("*/settings.py"))]
    source = "".join(path.read_text() for path in declared)
    read = set(re.findall(r'var\(\s*"([A-Z][A-Z0-9_]+)"', source))
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, flags=re.M))
    assert {"PG_CONN_STR", "KITE_API_KEY", "KOTAK_MPIN", "MQTT_HOST"} <= read, "the settings declarations were not found"
    assert read <= documented, f"undocumented in .env.example: {sorted(read - documented)}"
    # every documented variable has a comment line right above it
    lines = example.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^#?\s*[A-Z][A-Z0-9_]+=", line):
            j = i - 1
            while j >= 0 and re.match(r"^#?\s*[A-Z][A-Z0-9_]+=", lines[j]):
                j -= 1
            assert j >= 0 and lines[j].startswith("#"), f"{line!r} has no comment"


@pytest.mark.parametrize(
    ("name", "value"),
    [("KITE_WS_URL", "https://ws.kite.trade"), ("KITE_WS_URL", "ws://host:notaport"), ("KITE_API_URL", "api.kite.trade"),
     ("KOTAK_LOGIN_URL", "ftp://mis"), ("KOTAK_FEED_URL", "wss://")],
)  # fmt: skip
def test_an_endpoint_that_is_not_a_url_of_the_right_kind_is_named(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value}, env_file=None)


# ---- every setting that cannot be right stops the start ---------------------------------------


def _numeric_variables() -> list[str]:
    import typing
    from dataclasses import fields

    from brokers import registry
    from config import settings as config
    from config.env import _base_type, variable

    classes = [config.StorageSettings, config.CandleSettings, config.FeedSettings, config.LogSettings,
               config.MetricsSettings, config.MqttSettings, *registry.settings_classes().values()]  # fmt: skip
    names = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            spec = variable(f)
            if spec is not None and _base_type(hints[f.name]) in (int, float):
                names.append(spec.name)
    return names


@pytest.mark.parametrize("name", _numeric_variables())
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e400"])
def test_a_number_that_cannot_be_right_is_refused_naming_the_variable_and_the_range(name, value):
    with pytest.raises(ConfigError) as err:
        load_settings({name: value}, env_file=None)
    text = str(err.value)
    assert f"{name} is invalid" in text and "is not a" in text and ("at least" in text or " to " in text), text


@pytest.mark.parametrize(("name", "value"), [("MQTT_PORT", "1883.5"), ("KOTAK_MAX_CONNECTIONS", "2.5"), ("METRICS_PORT", "0")])
def test_a_whole_number_setting_refuses_fractions_and_zero_ports(name, value):
    with pytest.raises(ConfigError, match=f"{name} is invalid: '{value}' is not a whole number"):
        load_settings({name: value}, env_file=None)


def test_a_settings_file_line_that_cannot_be_parsed_names_the_file_the_line_and_the_variable(tmp_path):
    env_file = tmp_path / "marketfeed.env"
    env_file.write_text('LOG_LEVEL=INFO\nPG_CONN_STR="postgresql://feeder:pg-s3cret@db/candles\nLOG_FORMAT=text\n')
    with pytest.raises(ConfigError) as err:
        load_settings({}, env_file=env_file)
    text = str(err.value)
    assert f"{env_file}:2:" in text and "PG_CONN_STR" in text
    assert "pg-s3cret" not in text


def test_a_settings_file_that_is_not_text_names_the_file_and_the_line(tmp_path):
    env_file = tmp_path / "marketfeed.env"
    env_file.write_bytes(b"LOG_LEVEL=INFO\n\xff\xfeLOG_FORMAT=text\n")
    with pytest.raises(ConfigError, match=re.escape(f"{env_file}:2: not UTF-8 text")):
        load_settings({}, env_file=env_file)


def test_a_settings_file_named_on_the_command_line_must_exist_and_the_default_may_be_absent(tmp_path):
    with pytest.raises(ConfigError, match="settings file .*missing.env' does not exist"):
        load_settings({}, env_file=tmp_path / "missing.env", env_file_required=True)
    assert load_settings({}, env_file=tmp_path / ".env").storage.pg_conn_str is None


def test_an_unknown_marketfeed_broker_names_the_variable_and_the_choices():
    with pytest.raises(ConfigError, match="MARKETFEED_BROKER is invalid: 'zerodha'; use one of sim, kite"):
        load_settings({"MARKETFEED_BROKER": "zerodha"}, env_file=None)
    assert load_settings({"MARKETFEED_BROKER": "Kite"}, env_file=None).feed.broker == "kite"


@pytest.mark.parametrize(
    ("dsn", "complaint"),
    [("postgresql://feeder:pg-s3cret@db/candles?sslmode=bogus", "sslmode 'bogus' is not one of"),
     ("mysql://feeder:pg-s3cret@db/candles", "the scheme is mysql://"),
     ("postgresql://feeder:pg-s3cret@db:99999/candles", "port '99999' is not a port number"),
     ("host=db password=pg-s3cret foo=1", "libpq knows no option 'foo'"),
     ("postgresql://feeder:pg-s3cret%zz@db/candles", "cannot be parsed"),
     ("host=db password=pg-s3cret connect_timeout=soon", "connect_timeout 'soon' is not a whole number")],
)  # fmt: skip
def test_a_malformed_pg_conn_str_is_a_settings_error_without_the_password(dsn, complaint):
    with pytest.raises(ConfigError) as err:
        load_settings({"PG_CONN_STR": dsn}, env_file=None)
    text = str(err.value)
    assert "PG_CONN_STR" in text and complaint in text, text
    assert "pg-s3cret" not in text


# ---- the same, through the command line (in this process) -------------------------------------


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """main() in ``tmp_path`` with none of the machine's settings."""
    import os

    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("PG_", "SQLITE_", "CANDLE_", "KITE_", "KOTAK_", "MQTT_", "METRICS_", "MARKETFEED_")):
            monkeypatch.delenv(name)
    from cli.app import main

    return main


def test_a_settings_file_that_cannot_be_parsed_stops_a_check_with_exit_2(cli, tmp_path, capsys):
    (tmp_path / "bad.env").write_text('PG_CONN_STR="postgresql://feeder:pg-s3cret@db/candles\n')
    assert cli(["--env-file", "bad.env", "--test-database"]) == 2
    err = capsys.readouterr().err
    assert "bad.env:1:" in err and "pg-s3cret" not in err
    assert not (tmp_path / "data").exists()  # nothing went to SQLite instead


def test_a_missing_env_file_option_is_exit_2(cli, capsys):
    assert cli(["--env-file", "nowhere.env", "--test-database"]) == 2
    assert "nowhere.env' does not exist" in capsys.readouterr().err


def test_the_broker_comes_from_marketfeed_broker_in_the_settings_file_unless_the_option_names_one(cli, tmp_path, capsys):
    (tmp_path / "kite.env").write_text("MARKETFEED_BROKER=kite\n")
    assert cli(["--env-file", "kite.env", "--test-broker"]) == 2
    assert "KITE_API_KEY is missing" in capsys.readouterr().err  # the Kite check, not the simulator's
    assert cli(["--env-file", "kite.env", "--broker", "sim", "--login"]) == 2
    assert "--login is for --broker kite; sim" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value"),
    [("--duration", "nan"), ("--duration", "inf"), ("--duration", "-1"), ("--sim-speed", "nan"), ("--sim-speed", "0"),
     ("--sim-tick-rate", "inf"), ("--metrics-port", "99999"), ("--metrics-port", "0"), ("--limit", "0")],
)  # fmt: skip
def test_a_numeric_option_that_cannot_be_right_is_exit_2_naming_the_option_and_the_range(cli, capsys, option, value):
    with pytest.raises(SystemExit) as exited:
        cli([option, value, "--test-database"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: '{value}' is not a" in err and ("greater than" in err or " to " in err), err


def test_a_sim_tape_that_cannot_be_written_is_refused_before_the_feed_starts(tmp_path):
    import argparse

    from brokers import registry
    from brokers.registry import FeedContext
    from brokers.sim.settings import Settings

    options = argparse.Namespace(sim_speed=1.0, sim_start=None, seed=0, sim_tick_rate=1.0,
                                 sim_tape="/proc/no-such-process/tape.jsonl")  # fmt: skip
    with pytest.raises(ValueError, match="--sim-tape /proc/no-such-process/tape.jsonl: cannot write there"):
        registry.factory("sim").open_broker(Settings(), FeedContext(str(tmp_path), None, options))
