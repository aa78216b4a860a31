"""openstacksdk and keystoneauth errors translated into Flotilla's errors.

One table decides behaviour: quota exhausted and no valid host are permanent for this site
(``ProvisioningError``, the scheduler fails over); 5xx, 429, connection failures and
timeouts mean the site is unavailable for now (``SiteUnavailableError``, the agent retries).
Messages carry the action and the service's own words, never request headers or bodies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import requests
from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk

from flotilla.agents.driver import ProvisioningError, SiteUnavailableError
from flotilla.errors import FlotillaError

QUOTA_EXCEEDED: Final = "quota_exceeded"
NO_VALID_HOST: Final = "no_valid_host"

_QUOTA = re.compile(r"quota|limitexceeded|limit exceeded|over ?quota", re.IGNORECASE)
_NO_VALID_HOST = re.compile(r"no ?valid ?host", re.IGNORECASE)
_MAX_TEXT = 600
_CODES: Final[Mapping[int, tuple[str, bool]]] = {
    400: ("bad_request", False),
    401: ("unauthorized", False),
    403: ("forbidden", False),
    404: ("not_found", False),
    409: ("conflict", True),
    413: ("too_large", False),
}


def classify_http(status: int, text: str, *, action: str) -> FlotillaError:
    """The Flotilla error for an API answer with ``status`` and the service's ``text``."""
    message = f"{action}: {_clip(text) or 'no details'} (HTTP {status})"
    if status >= 500 or status in (408, 429):
        if _NO_VALID_HOST.search(text):
            return ProvisioningError(message, code=NO_VALID_HOST)
        return SiteUnavailableError(message)
    if _QUOTA.search(text):
        return ProvisioningError(message, code=QUOTA_EXCEEDED)
    if _NO_VALID_HOST.search(text):
        return ProvisioningError(message, code=NO_VALID_HOST)
    code, retryable = _CODES.get(status, ("rejected", False))
    return ProvisioningError(message, code=code, retryable=retryable)


def site_error(exc: BaseException, *, action: str) -> FlotillaError | None:
    """The Flotilla error for an exception an SDK call raised; None when it is not the SDK's.

    Unknown exceptions are left to the caller: they are bugs, not site conditions.
    """
    if isinstance(exc, FlotillaError):
        return exc
    if isinstance(exc, TimeoutError):
        return SiteUnavailableError(f"{action}: no answer in time")
    if isinstance(exc, sdk.HttpException) and exc.status_code is not None:
        return classify_http(exc.status_code, _sdk_text(exc), action=action)
    if isinstance(exc, ksa.HttpError) and exc.http_status:
        return classify_http(exc.http_status, str(exc.message or ""), action=action)
    if isinstance(exc, ksa.ConnectionError | requests.ConnectionError | requests.Timeout):
        return SiteUnavailableError(f"{action}: cannot reach the cloud: {_clip(str(exc))}")
    if isinstance(exc, ksa.EndpointNotFound | sdk.EndpointNotFound):
        return ProvisioningError(f"{action}: {_clip(str(exc))}", code="service_missing")
    if isinstance(exc, ksa.DiscoveryFailure):
        return SiteUnavailableError(f"{action}: {_clip(str(exc))}")
    if isinstance(exc, ksa.AuthPluginException | sdk.ConfigException):
        return ProvisioningError(f"{action}: {_clip(str(exc))}", code="site_misconfigured")
    if isinstance(exc, sdk.SDKException | ksa.ClientException):
        return ProvisioningError(f"{action}: {_clip(str(exc))}", code="site_error")
    return None


def dropped_connection(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a connection the cloud dropped.

    A timeout is not: the cloud may be slow, and a read sent again would wait as long.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ksa.ConnectTimeout | requests.Timeout):
            return False
        if isinstance(cause, ksa.ConnectFailure | requests.ConnectionError):
            return True
        cause = cause.__cause__
    return False


def fault_error(fault: Mapping[str, Any] | None, *, server: str) -> ProvisioningError:
    """The error for a server that went to ERROR, from nova's fault record."""
    text = str((fault or {}).get("message") or "the server went to ERROR without a fault")
    message = f"server {server}: {_clip(text)}"
    if _NO_VALID_HOST.search(text):
        return ProvisioningError(message, code=NO_VALID_HOST, resource=server)
    if _QUOTA.search(text):
        return ProvisioningError(message, code=QUOTA_EXCEEDED, resource=server)
    return ProvisioningError(message, code="server_failed", retryable=True, resource=server)


def is_not_found(exc: BaseException) -> bool:
    """Whether an SDK error says the resource does not exist (nothing left to delete)."""
    return isinstance(exc, sdk.NotFoundException) or (
        isinstance(exc, ksa.HttpError) and exc.http_status == 404
    )


def _sdk_text(exc: sdk.HttpException) -> str:
    # ``details`` holds the service's message; the URL in str(exc) adds nothing for users.
    details = exc.details
    if details:
        return str(details)
    return str(exc.message or "")


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."
