"""The REST gateway: Flotilla's ``/v1`` API and the INDIGO-compatible ``/deployments`` API.

It validates templates, publishes requests on the bus, and reads everything it shows
(deployments, attempts, logs, event streams, callbacks) from the scheduler's store.
``run_gateway`` (in ``flotilla.gateway.main``) runs it as a process of its own.
"""

from flotilla.gateway.app import Gateway
from flotilla.gateway.auth import LOCAL_IDENTITY, Authenticator, Identity, OidcAuthenticator
from flotilla.gateway.callback import CallbackSender, signature
from flotilla.gateway.deployment import Deployments, Listing, Submission
from flotilla.gateway.error import (
    AccessDeniedError,
    DeploymentBusyError,
    DeploymentNotFoundError,
    GatewayUnavailableError,
    InvalidRequestError,
    InvalidTokenError,
)
from flotilla.gateway.openapi import openapi_document
from flotilla.gateway.site import SiteBoard

__all__ = [
    "LOCAL_IDENTITY",
    "AccessDeniedError",
    "Authenticator",
    "CallbackSender",
    "DeploymentBusyError",
    "DeploymentNotFoundError",
    "Deployments",
    "Gateway",
    "GatewayUnavailableError",
    "Identity",
    "InvalidRequestError",
    "InvalidTokenError",
    "Listing",
    "OidcAuthenticator",
    "SiteBoard",
    "Submission",
    "openapi_document",
    "signature",
]
