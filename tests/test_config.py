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
