"""The URL-valued settings and FRONTEND_URL's origins: what each accepts, and one line
naming the setting (never a password) for what it does not; stray keys in .env."""

from __future__ import annotations

from pathlib import Path

import pytest

from stock_gateway.setting_sources import env_file_strays, load_settings
from stock_gateway.settings import ConfigError, environment_names
from tests.support.helpers import PROJECT


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in environment_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no developer's .env


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FINNHUB_WS_URL", "wss://ws.finnhub.io"),
        ("FINNHUB_WS_URL", "ws://127.0.0.1:9000/"),
        ("FINNHUB_WS_URL", "WSS://WS.Finnhub.io/path?x=1"),
        ("FINNHUB_REST_URL", "https://finnhub.io/api/v1"),
        ("FINNHUB_REST_URL", "http://127.0.0.1:9000/api/v1"),
        ("JWT_JWKS_URL", "https://idp.example/.well-known/jwks.json"),
        ("JWT_JWKS_URL", "http://127.0.0.1:8080/jwks.json"),  # the tests' key server
        ("JWT_JWKS_URL", "http://localhost/jwks.json"),
        ("JWT_JWKS_URL", "http://[::1]:8080/jwks.json"),
        ("REDIS_URL", "redis://redis:6379/0"),
        ("REDIS_URL", "redis://:pw@10.0.0.5"),
        ("REDIS_URL", "rediss://user:pw@cache.example:6380/2"),
        ("REDIS_URL", "unix:///var/run/redis.sock?db=1"),
        ("BAR_STORE_URL", "memory://"),
        ("BAR_STORE_URL", "sqlite:///data/bars.sqlite3"),
        ("BAR_STORE_URL", "sqlite:////var/lib/gateway/bars.sqlite3"),
        ("BAR_STORE_URL", "postgresql://gw:pw@db:5432/bars"),
        ("BAR_STORE_URL", "postgres://db/bars"),
    ],
)
def test_good_urls_are_accepted(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(load_settings(), name.lower()) == value


def test_optional_urls_may_be_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("JWT_JWKS_URL", "REDIS_URL", "BAR_STORE_URL"):
        monkeypatch.setenv(name, "")
    settings = load_settings()
    assert settings.jwt_jwks_url == settings.redis_url == settings.bar_store_url == ""


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("FINNHUB_WS_URL", "not-a-url", "got 'not-a-url' (no scheme://)"),
        ("FINNHUB_WS_URL", "https://ws.finnhub.io", "(a https:// URL)"),
        ("FINNHUB_WS_URL", "wss://", "(no host)"),
        ("FINNHUB_WS_URL", "ws://127.0.0.1:port/", "(a port that is not a number"),
        ("FINNHUB_WS_URL", "", "got '' (no scheme://)"),
        ("FINNHUB_REST_URL", "finnhub.io/api/v1", "(no scheme://)"),
        ("FINNHUB_REST_URL", "ws://finnhub.io/api/v1", "(a ws:// URL)"),
        (
            "JWT_JWKS_URL",
            "http://idp.example/jwks.json",
            "(http:// to a host that is not loopback)",
        ),
        ("JWT_JWKS_URL", "idp.example/jwks.json", "(no scheme://)"),
        ("REDIS_URL", "notaurl", "the value set has no scheme://"),
        ("REDIS_URL", "http://redis:6379", "the value set has a http:// URL"),
        ("REDIS_URL", "redis://", "the value set has no host"),
        ("REDIS_URL", "unix://", "the value set has no socket path"),
        ("BAR_STORE_URL", "foo://bar", "the value set has a foo:// URL"),
        ("BAR_STORE_URL", "sqlite://", "the value set has no path after sqlite:///"),
        ("BAR_STORE_URL", "sqlite://bars.db", "the value set has no path after sqlite:///"),
        ("BAR_STORE_URL", "postgresql:///bars", "the value set has no host"),
        ("BAR_STORE_URL", "bars.sqlite3", "the value set has no scheme://"),
    ],
)
def test_bad_urls_fail_with_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, complaint: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(f"{name} must be ") and complaint in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_URL", "redis://:hunter2@:6379/0"),
        ("REDIS_URL", "hunter2"),
        ("BAR_STORE_URL", "postgresql://gw:hunter2@/bars"),
        ("BAR_STORE_URL", "mysql://gw:hunter2@db/bars"),
        ("BAR_STORE_URL", "gw:hunter2@db/bars"),
        ("FINNHUB_WS_URL", "wss://user:hunter2@/?token=hunter2"),
        ("FINNHUB_WS_URL", "ws.finnhub.io?token=hunter2"),
    ],
)
def test_a_bad_url_never_shows_its_password(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"^{name} must be ") as raised:
        load_settings()
    assert "hunter2" not in str(raised.value)


def test_frontend_urls_must_be_origins_or_any(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRONTEND_URL", "https://User:pw@App.example:8443/app, *, app://x")
    assert load_settings().frontend_url == ("https://app.example:8443", "*", "app://x")
    for entry in ("localhost:3000", "app.example", "http://", "null", "http://h:99999"):
        monkeypatch.setenv("FRONTEND_URL", f"https://app.example,{entry}")
        with pytest.raises(ConfigError) as raised:
            load_settings()
        assert str(raised.value).startswith("FRONTEND_URL must be comma-separated origins")
        assert f"got {entry!r}" in str(raised.value)


def test_stray_env_file_keys_are_named_with_the_closest_setting(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# a comment\nFRONTEND_ULR=http://a.example\nMAX_CLIENT=5\nPORT=9000\n"
        "frontend_url=http://b.example\nCOMPOSE_PROJECT_NAME=gw\n"
    )
    assert env_file_strays() == [
        "FRONTEND_ULR in .env is not a setting; did you mean FRONTEND_URL?",
        "MAX_CLIENT in .env is not a setting; did you mean MAX_CLIENTS?",
        # decouple reads names as written: a lower-case key is never read either.
        "frontend_url in .env is not a setting; did you mean FRONTEND_URL?",
        "COMPOSE_PROJECT_NAME in .env is not a setting; docs/configuration.md lists them",
    ]
    assert load_settings().port == 9000  # the gateway still starts with the real ones


def test_without_an_env_file_nothing_is_stray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRONTEND_ULR", "http://a.example")  # the environment is not checked
    assert env_file_strays() == []


def test_the_example_env_file_has_no_stray_keys(tmp_path: Path) -> None:
    """Copied to .env as the README says, it must start without a warning."""
    example = tmp_path / ".env"
    example.write_text((PROJECT / ".env.example").read_text())
    assert env_file_strays(str(example)) == []
