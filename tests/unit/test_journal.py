"""The journal: each lifecycle step journals its status changes and the report behind them."""

from __future__ import annotations

import pytest

from flotilla.scheduler.model import JournalEntry
from flotilla.schemas import (
    DeploymentProvisioned,
    DeploymentStatusChanged,
    Progress,
    ProgressReported,
    ProvisionDeployment,
    Provisioned,
    ProvisioningFailed,
    ReleaseDeployment,
    new_id,
)
from tests.unit.test_lifecycle import Harness, failed, request
from tests.unit.test_placement import Clock

pytestmark = pytest.mark.timeout(30)


def types(entries: list[JournalEntry]) -> list[type]:
    return [type(entry.message) for entry in entries]


async def test_steps_journal_status_changes_and_site_reports_not_commands() -> None:
    """Request, failure and success journal statuses and reports; no command is journaled."""
    harness = Harness(Clock())
    did = new_id()
    await harness.commit(await harness.lifecycle.requested(request(did)))
    failure = failed(did, "alpha", 1, "quota")
    change = await harness.lifecycle.failed(failure)
    assert change is not None
    await harness.commit(change)
    done = Provisioned(deployment_id=did, site="beta", attempt=2)
    success = DeploymentProvisioned.create(done, source="/sites/beta")
    await harness.commit(await harness.lifecycle.provisioned(success))

    entries = await harness.store.journal(did)

    assert types(entries) == [
        DeploymentStatusChanged,  # requested, attempt 1 placed
        ProvisioningFailed,
        DeploymentStatusChanged,  # attempt 2 placed
        DeploymentProvisioned,
        DeploymentStatusChanged,  # complete
    ]
    assert entries[1].message == failure
    assert entries[3].message == success
    opening = entries[0].message
    assert isinstance(opening, DeploymentStatusChanged)
    assert (opening.data.previous, opening.data.site, opening.data.attempt) == (None, "alpha", 1)
    assert harness.commands(ProvisionDeployment)
    assert harness.commands(ReleaseDeployment)
    assert not any(isinstance(e.message, ProvisionDeployment | ReleaseDeployment) for e in entries)


async def test_progress_is_recorded_outside_changes() -> None:
    """Progress goes to the journal through record(), between the steps' entries."""
    harness = Harness(Clock())
    did = new_id()
    await harness.commit(await harness.lifecycle.requested(request(did)))
    data = Progress(deployment_id=did, site="alpha", attempt=1, phase="BUILD", message="50%")
    progress = ProgressReported.create(data, source="/sites/alpha")

    await harness.store.record([progress])

    entries = await harness.store.journal(did)
    assert entries[-1].message == progress
    assert entries[-1].deployment_id == did
