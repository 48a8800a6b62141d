"""Settings: declared once, read from the environment or .env, validated with messages
that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from stock_gateway.server.guard import ConnectionLimits
from stock_gateway.setting_sources import load_settings
from stock_gateway.settings import ConfigError, Settings, environment_names
from stock_gateway.socket_limits import connection_limits


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in environment_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no developer's .env


def test_defaults_come_from_the_declaration() -> None:
    assert load_settings() == Settings()
    assert Settings().log_level == "INFO" and Settings().max_upstream_symbols == 50


def test_values_are_read_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("DEMO", "yes")
    monkeypatch.setenv("CLIENT_MESSAGE_RATE", "2.5")
    monkeypatch.setenv("FRONTEND_URL", "https://a.example, https://b.example,")
    settings = load_settings()
    assert settings.log_level == "DEBUG" and settings.log_format == "json"
    assert settings.port == 9000 and settings.demo is True
    assert settings.client_message_rate == 2.5
    assert settings.frontend_url == ("https://a.example", "https://b.example")


def test_the_environment_wins_over_the_env_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("PORT=7000\nHOST=10.0.0.1\n")
    monkeypatch.setenv("PORT", "7001")
    settings = load_settings()
    assert settings.port == 7001 and settings.host == "10.0.0.1"


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("LOG_LEVEL", "verbose", "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT must be one of text, json"),
        ("DEMO", "maybe", "DEMO must be true or false"),
        ("PORT", "eighty", "PORT must be a number"),
        ("PORT", "-1", "PORT must be at least 1"),
        ("PORT", "0", "PORT must be at least 1"),
        ("PORT", "70000", "PORT must be at most 65535"),
        ("HOST", "http://0.0.0.0", "HOST must be an IP address or a host name"),
        ("HOST", "0.0.0.0:8000", "HOST must be an IP address or a host name"),
        ("HOST", "my host", "HOST must be an IP address or a host name"),
        ("MAX_CLIENTS", "0", "MAX_CLIENTS must be at least 1"),
        ("CLIENT_MESSAGE_RATE", "nan-ish", "CLIENT_MESSAGE_RATE must be a number"),
    ],
)
def test_bad_values_fail_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, complaint: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert complaint in str(raised.value)
    assert repr(value) in str(raised.value) or value in str(raised.value)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "127.0.0.1", "localhost", "gateway-1.internal"])
def test_addresses_and_host_names_are_valid_hosts(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    monkeypatch.setenv("HOST", host)
    monkeypatch.setenv("PORT", "65535")
    settings = load_settings()
    assert settings.host == host and settings.port == 65535


def test_frontend_urls_are_read_as_the_origins_browsers_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRONTEND_URL", "http://localhost:3000/, https://App.Example/app, *")
    assert load_settings().frontend_url == ("http://localhost:3000", "https://app.example", "*")


def test_settings_built_in_code_are_validated_too() -> None:
    with pytest.raises(ConfigError, match="LOG_LEVEL must be one of"):
        Settings(log_level="verbose")  # type: ignore[arg-type]


def test_secrets_stay_out_of_repr() -> None:
    settings = Settings(
        finnhub_api_key="k-secret", gateway_token="t-secret", redis_url="redis://:pw@h/0"
    )
    shown = repr(settings)
    assert "k-secret" not in shown and "t-secret" not in shown and "pw@" not in shown


def test_a_cluster_refuses_a_sqlite_bar_store() -> None:
    """A file is one process's: a cluster's processes (on other machines) cannot share it."""
    with pytest.raises(ConfigError, match="BAR_STORE_URL cannot be sqlite") as refused:
        Settings(redis_url="redis://127.0.0.1:1/0", bar_store_url="sqlite:///secret/bars.db")
    assert "secret" not in str(refused.value)
    Settings(redis_url="redis://127.0.0.1:1/0", bar_store_url="postgresql://h/db")
    Settings(redis_url="redis://127.0.0.1:1/0", bar_store_url="memory://")
    Settings(bar_store_url="sqlite:///data/bars.sqlite3")  # one process: its own file


def test_the_guards_limits_before_the_lifespan_are_the_settings_defaults() -> None:
    """server/ cannot read the settings (it sits below them), so its fallback limits are
    written out again: they must stay what a default gateway's settings give."""
    assert ConnectionLimits() == connection_limits(Settings())
