"""SDK errors become Flotilla errors: quota and no valid host permanent, outages retryable."""

from __future__ import annotations

import pytest
import requests
from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk

from flotilla.agents.driver import ProvisioningError, SiteUnavailableError
from flotilla.agents.openstack.error import classify_http, fault_error, site_error


def _http(status: int, details: str) -> sdk.HttpException:
    response = requests.Response()
    response.status_code = status
    response.url = "http://cloud.example/v2.1/servers"
    return sdk.HttpException(message="Error", response=response, details=details)


@pytest.mark.parametrize(
    ("status", "text", "code", "retryable"),
    [
        (
            403,
            "Quota exceeded for instances: Requested 1, but already used 2 of 2 instances",
            "quota_exceeded",
            False,
        ),
        (
            413,
            "VolumeLimitExceeded: Maximum number of volumes allowed (1) exceeded for quota.",
            "quota_exceeded",
            False,
        ),
        (409, "Quota exceeded for resources: ['floatingip'].", "quota_exceeded", False),
        (
            400,
            "No valid host was found. There are not enough hosts available.",
            "no_valid_host",
            False,
        ),
        (400, "PCI alias a100 is not defined", "bad_request", False),
        (404, "Flavor m1.huge could not be found.", "not_found", False),
        (409, "Cannot 'delete' instance while it is in task_state deleting", "conflict", True),
        (401, "The request you have made requires authentication.", "unauthorized", False),
        (418, "I'm a teapot", "rejected", False),
    ],
)
def test_refusals_are_provisioning_errors_with_a_code(
    status: int, text: str, code: str, retryable: bool
) -> None:
    """A refusal names its cause; quota and no valid host are permanent for the site."""
    error = classify_http(status, text, action="create server web-0")
    assert isinstance(error, ProvisioningError)
    assert (error.code, error.retryable) == (code, retryable)
    assert error.message.startswith("create server web-0: ")
    assert f"(HTTP {status})" in error.message


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408])
def test_server_errors_and_throttling_are_retryable(status: int) -> None:
    """5xx, 429 and 408 mean the site cannot serve now: try again later."""
    error = classify_http(status, "Service Unavailable", action="list servers")
    assert isinstance(error, SiteUnavailableError)
    assert error.retryable


def test_sdk_http_exception_uses_the_service_message() -> None:
    """The service's own words reach the user, not the SDK's generic text."""
    error = site_error(_http(403, "Quota exceeded for cores"), action="create server a")
    assert isinstance(error, ProvisioningError)
    assert error.code == "quota_exceeded"
    assert "Quota exceeded for cores" in error.message


@pytest.mark.parametrize(
    "exc",
    [
        ksa.ConnectFailure("Unable to establish connection"),
        ksa.ConnectTimeout("timed out"),
        requests.ConnectionError("refused"),
        TimeoutError(),
        ksa.http.ServiceUnavailable(),
    ],
)
def test_connection_failures_and_timeouts_are_site_unavailable(exc: BaseException) -> None:
    """An unreachable or silent cloud is retryable, whatever layer noticed it."""
    assert isinstance(site_error(exc, action="list flavors"), SiteUnavailableError)


def test_missing_service_and_bad_auth_configuration_are_permanent() -> None:
    """No endpoint for a service, or an unusable auth section, will not fix itself."""
    missing = site_error(sdk.EndpointNotFound("no volume service"), action="create volume v")
    assert isinstance(missing, ProvisioningError)
    assert missing.code == "service_missing"
    auth = site_error(ksa.MissingAuthPlugin("no auth"), action="list servers")
    assert isinstance(auth, ProvisioningError)
    assert auth.code == "site_misconfigured"


def test_unknown_exceptions_are_left_alone() -> None:
    """A bug in the driver is not disguised as a site condition."""
    assert site_error(KeyError("x"), action="anything") is None


def test_server_fault_maps_no_valid_host_and_other_failures() -> None:
    """A server in ERROR is no_valid_host when nova says so, else a retryable failure."""
    no_host = fault_error(
        {"code": 500, "message": "No valid host was found. There are not enough hosts available."},
        server="web-0",
    )
    assert (no_host.code, no_host.retryable, no_host.resource) == ("no_valid_host", False, "web-0")
    other = fault_error({"code": 500, "message": "Build of instance aborted"}, server="web-0")
    assert (other.code, other.retryable) == ("server_failed", True)
    assert fault_error(None, server="web-0").code == "server_failed"
