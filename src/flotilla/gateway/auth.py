"""Who is calling: OIDC bearer tokens checked against the issuer's published keys.

``OidcAuthenticator`` verifies a token's signature with the issuer's JWKS (fetched with
httpx, cached, fetched again when a token names a key it does not know, at most once per
``refresh_interval``), its expiry, issuer and audience, and reads the caller's groups from
the configured claim and from ``wlcg.groups``. Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, Protocol, Self

import httpx
import jwt
import structlog

from flotilla.errors import ConfigurationError
from flotilla.gateway.error import GatewayUnavailableError, InvalidTokenError
from flotilla.settings import GatewaySettings

_log = structlog.get_logger("flotilla.gateway")

# Asymmetric algorithms only: a symmetric one would let anyone holding the public key sign.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
WLCG_GROUPS = "wlcg.groups"


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """The caller of one request: who they are and which tenant groups they act for."""

    subject: str
    issuer: str | None = None
    groups: tuple[str, ...] = ()
    admin: bool = False

    @property
    def owner(self) -> str:
        """The owner name deployments are recorded under: ``subject@issuer``."""
        return self.subject if self.issuer is None else f"{self.subject}@{self.issuer}"

    @property
    def default_group(self) -> str | None:
        """The group used when a request names none: the first one the token lists."""
        return self.groups[0] if self.groups else None

    def may_use(self, group: str) -> bool:
        """Whether the caller may see, create and delete deployments of ``group``."""
        return self.admin or group in self.groups


LOCAL_IDENTITY = Identity(subject="local", groups=("local",), admin=True)
"""Everyone, when authentication is off (embedded mode): one local user who sees everything."""


class Authenticator(Protocol):
    """Turns a request's ``Authorization`` header into an identity."""

    async def authenticate(self, authorization: str | None) -> Identity:
        """The caller's identity.

        Raises:
            InvalidTokenError: no token, or a token that does not verify.
            GatewayUnavailableError: the keys to verify it cannot be fetched now.
        """
        ...


class OidcAuthenticator:
    """Verifies OIDC access tokens (JWTs) of one issuer.

    Args:
        issuer: The expected ``iss``.
        audience: The expected ``aud``; None skips the audience check (and then refuses
            tokens that carry one, as PyJWT does).
        jwks_url: Where the issuer publishes its keys; None discovers it from
            ``<issuer>/.well-known/openid-configuration``.
        group_claim: The claim listing the caller's groups.
        admin_group: Members of this group see every deployment.
        refresh_interval: Least time between two fetches of the keys.
        leeway: Clock skew tolerated on ``exp`` and ``nbf``.
        timeout: Bound of one fetch.
        http: An httpx client to use (the authenticator closes only the one it makes).
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str | None = None,
        jwks_url: str | None = None,
        group_claim: str = "groups",
        admin_group: str = "flotilla-admins",
        refresh_interval: timedelta = timedelta(seconds=10),
        leeway: timedelta = timedelta(seconds=30),
        timeout: timedelta = timedelta(seconds=5),
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._issuer = issuer
        self._audience = audience
        self._jwks_url = jwks_url
        self._group_claim = group_claim
        self._admin_group = admin_group
        self._refresh = refresh_interval.total_seconds()
        self._leeway = leeway
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout.total_seconds())
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> OidcAuthenticator:
        """An authenticator for the gateway's configured issuer.

        Raises:
            ConfigurationError: no issuer or no audience is configured.
        """
        if settings.oidc_issuer is None:
            raise ConfigurationError(
                "gateway.oidc_issuer is required when gateway.auth is on"
                " (FLOTILLA_GATEWAY__OIDC_ISSUER)"
            )
        if settings.oidc_audience is None:
            # Without an audience, a token the issuer minted for any other service of the
            # same identity provider would be accepted here.
            raise ConfigurationError(
                "gateway.oidc_audience is required when gateway.auth is on"
                " (FLOTILLA_GATEWAY__OIDC_AUDIENCE)"
            )
        return cls(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks_url=settings.oidc_jwks_url,
            group_claim=settings.oidc_group_claim,
            admin_group=settings.oidc_admin_group,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this authenticator made it; safe to call twice."""
        if self._own_http:
            await self._http.aclose()

    async def authenticate(self, authorization: str | None) -> Identity:
        """Verify the bearer token of an ``Authorization`` header and return its identity."""
        token = _bearer(authorization)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(f"malformed token: {exc}") from exc
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise InvalidTokenError(f"token algorithm {algorithm!r} is not accepted")
        key = await self._key(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(f"invalid token: {exc}") from exc
        except (TypeError, ValueError) as exc:
            # An algorithm of another key type than the key's (RS256 with an EC key).
            raise InvalidTokenError(
                f"token algorithm {algorithm!r} does not fit its key {header.get('kid')!r}"
            ) from exc
        return self._identity(claims)

    def _identity(self, claims: dict[str, Any]) -> Identity:
        groups = [*_names(claims.get(self._group_claim))]
        groups += [g.removeprefix("/") for g in _names(claims.get(WLCG_GROUPS))]
        if self._group_claim == WLCG_GROUPS:
            groups = [g.removeprefix("/") for g in groups]
        unique = tuple(dict.fromkeys(g for g in groups if g))
        return Identity(
            subject=str(claims["sub"]),
            issuer=str(claims["iss"]),
            groups=unique,
            admin=self._admin_group in unique,
        )

    async def _key(self, kid: str | None) -> jwt.PyJWK:
        """The signing key ``kid``, fetching the key set again if it is not known yet."""
        found = self._lookup(kid)
        if found is not None:
            return found
        async with self._lock:
            found = self._lookup(kid)
            if found is None and self._may_refresh():
                await self._fetch()
                found = self._lookup(kid)
        if found is None:
            raise InvalidTokenError(f"token signed with an unknown key {kid!r}")
        return found

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _may_refresh(self) -> bool:
        return self._fetched_at is None or time.monotonic() - self._fetched_at >= self._refresh

    async def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            url = self._jwks_url or await self._discover()
            response = await self._http.get(url)
            response.raise_for_status()
            keys = jwt.PyJWKSet.from_dict(response.json()).keys
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            _log.warning("jwks_fetch_failed", issuer=self._issuer, error=str(exc))
            raise GatewayUnavailableError(
                f"cannot fetch the signing keys of {self._issuer}: {exc}"
            ) from exc
        self._keys = {key.key_id: key for key in keys}
        _log.info("jwks_fetched", issuer=self._issuer, keys=len(self._keys))

    async def _discover(self) -> str:
        url = f"{self._issuer.rstrip('/')}/.well-known/openid-configuration"
        response = await self._http.get(url)
        response.raise_for_status()
        jwks_uri = response.json().get("jwks_uri")
        if isinstance(jwks_uri, str) and jwks_uri:
            self._jwks_url = jwks_uri
            return jwks_uri
        raise ValueError(f"{url} names no jwks_uri")


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise InvalidTokenError("a bearer token is required (Authorization: Bearer <token>)")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidTokenError("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _names(value: object) -> Iterable[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []
