"""Gateway settings: nested environment variables, durations, and a hidden callback secret."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flotilla.errors import ConfigurationError
from flotilla.gateway import OidcAuthenticator
from flotilla.settings import GatewaySettings, Settings


def test_gateway_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLOTILLA_GATEWAY__* set the gateway group; the callback secret never shows."""
    monkeypatch.setenv("FLOTILLA_GATEWAY__PORT", "9090")
    monkeypatch.setenv("FLOTILLA_GATEWAY__OIDC_ISSUER", "https://iam.example.org/")
    monkeypatch.setenv("FLOTILLA_GATEWAY__OIDC_GROUP_CLAIM", "wlcg.groups")
    monkeypatch.setenv("FLOTILLA_GATEWAY__CALLBACK_SECRET", "hunter2-callback")
    monkeypatch.setenv("FLOTILLA_GATEWAY__CALLBACK_BACKOFF", "PT2S")

    settings = Settings()

    gateway = settings.gateway
    assert (gateway.port, gateway.auth) == (9090, True)
    assert gateway.oidc_issuer == "https://iam.example.org/"
    assert gateway.oidc_group_claim == "wlcg.groups"
    assert gateway.callback_backoff == timedelta(seconds=2)
    assert gateway.callback_secret is not None
    assert gateway.callback_secret.get_secret_value() == "hunter2-callback"
    assert "hunter2-callback" not in repr(settings)
    assert "hunter2-callback" not in settings.model_dump_json()


def test_authentication_needs_an_issuer() -> None:
    """With authentication on and no issuer, the authenticator refuses to be built."""
    with pytest.raises(ConfigurationError, match="OIDC_ISSUER"):
        OidcAuthenticator.from_settings(GatewaySettings())


def test_authentication_needs_an_audience() -> None:
    """An issuer alone is not enough: tokens for other services of it would be accepted."""
    with pytest.raises(ConfigurationError, match="OIDC_AUDIENCE"):
        OidcAuthenticator.from_settings(GatewaySettings(oidc_issuer="https://iam.example.org/"))
