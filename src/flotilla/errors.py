"""The error hierarchy shared by every Flotilla component.

Retryability is a type, not a string match: whoever handles an error decides what to do
from its branch. ``RetryableError`` means "the same thing may work later" (a site that is
unreachable, an API answering 5xx, a timeout); ``PermanentError`` means "it will fail the
same way every time" (a bad template, a malformed message, no site that satisfies).
"""

from __future__ import annotations

from typing import Any


class FlotillaError(Exception):
    """Root of every error Flotilla raises on purpose.

    Structured fields travel with the error so a log line or a failure event can name what
    failed without parsing the message.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        deployment_id: str | None = None,
        site: str | None = None,
        resource: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.deployment_id = deployment_id
        self.site = site
        self.resource = resource

    def fields(self) -> dict[str, Any]:
        """The structured fields that are set, for logs and failure events."""
        items = {"deployment_id": self.deployment_id, "site": self.site, "resource": self.resource}
        return {key: value for key, value in items.items() if value is not None}


class RetryableError(FlotillaError):
    """The operation may succeed if tried again later."""

    retryable = True


class PermanentError(FlotillaError):
    """The operation will fail the same way every time it is tried."""


class ConfigurationError(PermanentError):
    """Settings or a configuration file are wrong; the message names the field."""


class MessageDecodeError(PermanentError):
    """A payload on the bus is not a valid Flotilla message."""


class UnroutableMessageError(PermanentError):
    """The broker had no queue bound for a published message's routing key."""


class BusClosedError(FlotillaError):
    """The bus was used before it was opened or after it was closed."""


class BusUnavailableError(RetryableError):
    """The broker could not be reached or did not confirm in time."""


class BrokerAdminError(FlotillaError):
    """The broker's management API refused or failed an administrative request."""
