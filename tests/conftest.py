"""Fixtures shared by every test layer: service addresses and unique names."""

from __future__ import annotations

import os
import uuid

import pytest

from flotilla.log import configure_logging
from flotilla.settings import LogSettings

configure_logging(LogSettings(level="debug", format="console"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that restart a shared service last, so none runs in their wake."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The real RabbitMQ the integration and contract tests use (guest on loopback)."""
    return os.environ.get("FLOTILLA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture(scope="session")
def management_url() -> str:
    """RabbitMQ's management HTTP API."""
    return os.environ.get("FLOTILLA_TEST_MANAGEMENT_URL", "http://127.0.0.1:15672")


@pytest.fixture
def unique() -> str:
    """A short random token for naming queues, exchanges, sites and users in one test."""
    return uuid.uuid4().hex[:10]
