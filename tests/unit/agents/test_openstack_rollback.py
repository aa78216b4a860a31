"""A rollback that cannot reach the cloud for a moment tries again before giving up."""

from __future__ import annotations

import pytest

from flotilla.agents.driver import ProvisioningError, SiteUnavailableError
from flotilla.agents.openstack import driver as driver_module
from flotilla.agents.openstack.config import OpenStackSettings
from flotilla.agents.openstack.driver import OpenStackDriver
from flotilla.agents.openstack.naming import AttemptNames
from flotilla.schemas import ResourceRef

NAMES = AttemptNames(deployment_id="0b5e8a53-6f5c-4a4e-9d5e-0d6b7c2f7a10", attempt=1)
LEFT = (ResourceRef(kind="server", id="s-1", name="vm-0"),)


class FlakyTeardown:
    """Stands in for the teardown: fails with the given errors in turn, then succeeds."""

    runs = 0
    errors: list[Exception] = []

    def __init__(self, **_: object) -> None:
        pass

    async def run(self) -> None:
        FlakyTeardown.runs += 1
        if FlakyTeardown.errors:
            raise FlakyTeardown.errors.pop(0)


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> OpenStackDriver:
    FlakyTeardown.runs = 0
    monkeypatch.setattr(driver_module, "Teardown", FlakyTeardown)
    monkeypatch.setattr(driver_module, "_ROLLBACK_RETRIES", (0.0, 0.0, 0.0))
    return OpenStackDriver(OpenStackSettings(cloud="c", network="private"), site="os")


async def test_an_unreachable_cloud_is_tried_again_until_the_rollback_succeeds(
    driver: OpenStackDriver,
) -> None:
    FlakyTeardown.errors = [SiteUnavailableError("connection reset")] * 2
    assert await driver._roll_back(NAMES) == ()
    assert FlakyTeardown.runs == 3


async def test_a_cloud_that_stays_unreachable_is_given_up_after_the_retries(
    driver: OpenStackDriver,
) -> None:
    FlakyTeardown.errors = [SiteUnavailableError("connection reset")] * 10
    assert await driver._roll_back(NAMES) == ()
    assert FlakyTeardown.runs == 4


async def test_a_teardown_that_fails_lists_what_is_left_without_retrying(
    driver: OpenStackDriver,
) -> None:
    FlakyTeardown.errors = [ProvisioningError("server stuck", code="delete_failed", resources=LEFT)]
    assert await driver._roll_back(NAMES) == LEFT
    assert FlakyTeardown.runs == 1
