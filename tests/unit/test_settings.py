"""Settings: environment nesting, validation errors that name the field, secrets hidden."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import ValidationError

from flotilla.broker import DELIVERY_POLICY
from flotilla.bus import MemoryBus
from flotilla.bus.memory import MemoryBroker
from flotilla.scheduler.main import build_scheduler
from flotilla.scheduler.service import SchedulerService
from flotilla.scheduler.store import MemoryStore
from flotilla.scheduler.tosca import TemplateRequirements
from flotilla.settings import Settings


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLOTILLA_BUS__PREFETCH sets settings.bus.prefetch."""
    monkeypatch.setenv("FLOTILLA_BUS__PREFETCH", "7")
    monkeypatch.setenv("FLOTILLA_MQTT__PORT", "1884")
    settings = Settings()
    assert settings.bus.prefetch == 7
    assert settings.mqtt.port == 1884


def test_secrets_never_appear_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker URL's password is hidden in repr and in a JSON dump."""
    monkeypatch.setenv("FLOTILLA_BUS__URL", "amqp://agent:hunter2secret@broker:5672/")
    settings = Settings()
    assert "hunter2secret" not in repr(settings)
    assert "hunter2secret" not in settings.model_dump_json()
    assert "hunter2secret" in settings.bus.url.get_secret_value()


def test_a_wrong_value_names_its_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value is refused with the dotted name of the field."""
    monkeypatch.setenv("FLOTILLA_BUS__PREFETCH", "zero")
    with pytest.raises(ValidationError, match=r"bus\.prefetch"):
        Settings()


def test_the_scheduler_takes_its_own_prefetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler works on FLOTILLA_SCHEDULER__PREFETCH messages at once (default 64),
    not the bus-wide prefetch other consumers use."""
    monkeypatch.setenv("FLOTILLA_BUS__PREFETCH", "7")
    store = MemoryStore()

    def build(settings: Settings) -> SchedulerService:
        bus = MemoryBus(policy=DELIVERY_POLICY, broker=MemoryBroker())
        return build_scheduler(settings, bus=bus, store=store, parser=_NoTemplates(), slas=[])

    assert build(Settings()).prefetch == 64
    monkeypatch.setenv("FLOTILLA_SCHEDULER__PREFETCH", "128")
    assert build(Settings()).prefetch == 128


def test_the_outbox_is_published_from_a_child_process_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """By default a child process publishes, on SQLite as on PostgreSQL;
    FLOTILLA_SCHEDULER__RELAY_PROCESS=false keeps it in the scheduler's process."""
    assert Settings().scheduler.relay_process  # SQLite by default
    monkeypatch.setenv("FLOTILLA_SCHEDULER__STORE_URL", "postgresql+asyncpg://db/flotilla")
    assert Settings().scheduler.relay_process
    monkeypatch.setenv("FLOTILLA_SCHEDULER__RELAY_PROCESS", "false")
    assert not Settings().scheduler.relay_process


class _NoTemplates:
    async def requirements(self, template: str, inputs: Mapping[str, Any]) -> TemplateRequirements:
        raise AssertionError("no template is parsed while wiring")
