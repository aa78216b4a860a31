"""Tokens and tenancy: real JWTs from a local issuer; users see only their groups' deployments."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flotilla.gateway import InvalidTokenError, OidcAuthenticator
from tests.unit.gateway.conftest import AUDIENCE, TEMPLATE, Issuer, Rig

pytestmark = pytest.mark.timeout(60)


async def create(rig: Rig, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    response = await rig.client.post(
        "/v1/deployments", json={"template": TEMPLATE, **fields}, headers=headers
    )
    assert response.status == 201, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def test_a_valid_token_creates_in_the_callers_group(secured: Rig, issuer: Issuer) -> None:
    """The owner is subject@issuer and the group defaults to the token's first group."""
    view = await create(secured, issuer.header("ann", ["physics", "chemistry"]))

    assert view["owner"] == f"ann@{issuer.url}"
    assert view["group"] == "physics"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "bearer token is required"),
        ("expired", "expired"),
        ("wrong_audience", "Audience"),
        ("forged", "Signature verification failed"),
        ("unknown_key", "unknown key"),
        ("not_a_jwt", "malformed token"),
    ],
)
async def test_bad_tokens_are_401(
    secured: Rig, issuer: Issuer, other_key: rsa.RSAPrivateKey, case: str, message: str
) -> None:
    """No token, an expired one, one for another audience or signed by another key: 401."""
    tokens = {
        "missing": None,
        "expired": issuer.token("ann", ["physics"], lifetime=-120),
        "wrong_audience": issuer.token("ann", ["physics"], audience="someone-else"),
        "forged": issuer.token("ann", ["physics"], key=other_key),
        "unknown_key": issuer.token("ann", ["physics"], key=other_key, kid="rotated"),
        "not_a_jwt": "not-a-jwt",
    }
    token = tokens[case]
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}

    response = await secured.client.get("/v1/deployments", headers=headers)

    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = await response.json()
    assert body["error"]["code"] == "invalid_token"
    assert message in body["error"]["message"]
    if token is not None:
        assert token not in await response.text()


async def test_users_see_and_delete_only_their_groups(secured: Rig, issuer: Issuer) -> None:
    """bob (chemistry) neither sees nor deletes ann's physics deployment; an admin sees both."""
    ann = issuer.header("ann", ["physics"])
    bob = issuer.header("bob", ["chemistry"])
    admin = issuer.header("root", ["flotilla-admins"])
    physics = await create(secured, ann)
    chemistry = await create(secured, bob)

    def ids(page: dict[str, Any]) -> set[str]:
        return {item["id"] for item in page["items"]}

    ann_page = await (await secured.client.get("/v1/deployments", headers=ann)).json()
    bob_page = await (await secured.client.get("/v1/deployments", headers=bob)).json()
    admin_page = await (await secured.client.get("/v1/deployments", headers=admin)).json()
    bob_reads = await secured.client.get(f"/v1/deployments/{physics['id']}", headers=bob)
    bob_deletes = await secured.client.delete(f"/v1/deployments/{physics['id']}", headers=bob)
    bob_indigo = await secured.client.get(f"/deployments/{physics['id']}", headers=bob)
    bob_filters = await secured.client.get("/v1/deployments?group=physics", headers=bob)

    assert ids(ann_page) == {physics["id"]}
    assert ids(bob_page) == {chemistry["id"]}
    assert ids(admin_page) == {physics["id"], chemistry["id"]}
    assert bob_reads.status == 404
    assert bob_deletes.status == 404
    assert bob_indigo.status == 404
    assert bob_filters.status == 403
    record = await secured.store.get(physics["id"])
    assert record is not None
    assert record.operation is not None  # still creating, not deleted


async def test_creating_in_a_foreign_group_is_403(secured: Rig, issuer: Issuer) -> None:
    """Naming a group the token does not list is refused, in both APIs."""
    ann = issuer.header("ann", ["physics"])

    v1 = await secured.client.post(
        "/v1/deployments", json={"template": TEMPLATE, "group": "chemistry"}, headers=ann
    )
    indigo = await secured.client.post(
        "/deployments", json={"template": TEMPLATE, "userGroup": "chemistry"}, headers=ann
    )
    groupless = await secured.client.post(
        "/v1/deployments", json={"template": TEMPLATE}, headers=issuer.header("cid", [])
    )

    assert v1.status == 403
    assert "chemistry" in (await v1.json())["error"]["message"]
    assert indigo.status == 403
    assert (await indigo.json())["title"] == "Forbidden"
    assert groupless.status == 403
    assert await secured.store.list_deployments() == ([], 0)


async def test_wlcg_groups_with_a_leading_slash_count(secured: Rig, issuer: Issuer) -> None:
    """Groups from wlcg.groups ('/physics') are accepted without their slash."""
    headers = {
        "Authorization": f"Bearer {issuer.token('eve', None, **{'wlcg.groups': ['/physics']})}"
    }

    view = await create(secured, headers, group="physics")

    assert view["group"] == "physics"


async def test_indigo_created_by_is_subject_and_issuer(secured: Rig, issuer: Issuer) -> None:
    """INDIGO's createdBy splits the owner into subject and issuer; createdBy=me filters."""
    ann = issuer.header("ann", ["physics"])
    response = await secured.client.post(
        "/deployments", json={"template": TEMPLATE, "userGroup": "physics"}, headers=ann
    )
    body = await response.json()
    mine = await (await secured.client.get("/deployments?createdBy=me", headers=ann)).json()

    assert body["createdBy"] == {"subject": "ann", "issuer": issuer.url}
    assert [item["uuid"] for item in mine["content"]] == [body["uuid"]]


async def test_keys_are_fetched_again_for_an_unknown_kid(issuer: Issuer) -> None:
    """A token naming a key not seen yet makes the key set be fetched again (rate-limited)."""
    async with (
        OidcAuthenticator(
            issuer=issuer.url, audience=AUDIENCE, refresh_interval=timedelta(0)
        ) as eager,
        OidcAuthenticator(issuer=issuer.url, audience=AUDIENCE) as limited,
    ):
        identity = await eager.authenticate(f"Bearer {issuer.token('ann', ['physics'])}")
        fetched_once = len(issuer.fetches)
        with pytest.raises(InvalidTokenError, match="unknown key 'nope'"):
            await eager.authenticate(f"Bearer {issuer.token('ann', ['physics'], kid='nope')}")
        refetched = len(issuer.fetches)
        await limited.authenticate(f"Bearer {issuer.token('ann', ['physics'])}")
        for _ in range(3):
            with pytest.raises(InvalidTokenError):
                await limited.authenticate(f"Bearer {issuer.token('ann', kid='nope')}")

    assert (fetched_once, refetched) == (1, 2)
    assert len(issuer.fetches) == 3  # the rate-limited authenticator fetched only once
    assert identity.subject == "ann"
    assert identity.groups == ("physics",)
    assert not identity.admin


async def test_an_algorithm_that_does_not_fit_the_key_is_401(secured: Rig, issuer: Issuer) -> None:
    """ES256 claimed for the issuer's RSA key: refused as a bad token, not a server error."""
    now = int(time.time())
    claims = {"sub": "ann", "iss": issuer.url, "aud": AUDIENCE, "exp": now + 300}
    ec_key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": issuer.kid})

    response = await secured.client.get(
        "/v1/deployments", headers={"Authorization": f"Bearer {token}"}
    )

    assert response.status == 401
    assert (await response.json())["error"]["code"] == "invalid_token"
