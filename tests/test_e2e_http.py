"""HTTP fallback API end to end: real serve process, mutual TLS, Idempotency-Key semantics."""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from realtime.client import CommandBuilder, new_nonce, now_ms
from tests.conftest import Pki, seed
from tests.support.databases import TestDatabases
from tests.support.e2e import Deployment, open_session, recv_json, transfer_headers
from tests.support.servers import ServeProcess, project_env

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def deployment(pki: Pki, test_databases: TestDatabases, run_dir: Path) -> Iterator[Deployment]:
    database_url = test_databases.create("http")
    seed(
        database_url,
        clients=[(name, pki.cert(name)) for name in ("alice", "bob")],
        accounts=[
            ("HA-1", "alice", "USD", "1000.00"),
            ("HA-EUR", "alice", "EUR", "50.00"),
            ("HB-1", "bob", "USD", "1000.00"),
        ],
    )
    server = ServeProcess(env=project_env(DATABASE_URL=database_url), pki_dir=pki.directory, log_dir=run_dir).start()
    yield Deployment(server, database_url, pki.directory)
    server.stop()


@pytest.fixture
def alice(deployment: Deployment) -> Iterator[httpx.Client]:
    with deployment.http("alice") as client:
        yield client


@pytest.fixture
def bob(deployment: Deployment) -> Iterator[httpx.Client]:
    with deployment.http("bob") as client:
        yield client


def body(amount: str = "1.00", **overrides: str) -> dict[str, str]:
    return {"from_account": "HA-1", "to_account": "HB-1", "amount": amount, "currency": "USD", **overrides}


def post(client: httpx.Client, document: object, key: str | None, **kwargs) -> httpx.Response:
    content = document if isinstance(document, (str, bytes)) else json.dumps(document)
    return client.post("/api/v1/transfers/", content=content, headers=transfer_headers(key, **kwargs))


# --- success and idempotent retries -----------------------------------------


def test_post_executes_transfer(deployment: Deployment, alice: httpx.Client) -> None:
    before = deployment.balance("HA-1")
    response = post(alice, body("7.25", reference="order 1"), "http-create-1")
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert list(document) == ["id", "from_account", "to_account", "amount", "currency", "reference", "created_at"]
    assert document["amount"] == "7.25"
    assert response.headers["location"] == f"/api/v1/transfers/{document['id']}/"
    assert "idempotency-key-expires" in response.headers
    assert "idempotent-replayed" not in response.headers
    assert deployment.balance("HA-1") == before - Decimal("7.25")


def test_retry_returns_stored_response_byte_for_byte(deployment: Deployment, alice: httpx.Client) -> None:
    first = post(alice, body("3.00"), "http-retry-1")
    balance = deployment.balance("HA-1")
    # Key order and whitespace differ; the normalised transfer is the same.
    reordered = '{ "currency":"USD", "amount": "3.0", "to_account":"HB-1","from_account":"HA-1"}'
    retry = post(alice, reordered, "http-retry-1")
    assert retry.status_code == first.status_code == 201
    assert retry.content == first.content
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["idempotency-key-expires"] == first.headers["idempotency-key-expires"]
    assert deployment.balance("HA-1") == balance
    assert deployment.count("transfers_transfer", "idempotency_key = %s", ("http-retry-1",)) == 1


def test_key_mismatch_leaves_original(deployment: Deployment, alice: httpx.Client) -> None:
    first = post(alice, body("4.00"), "http-mismatch-1")
    mismatch = post(alice, body("5.00"), "http-mismatch-1")
    assert mismatch.status_code == 422
    assert mismatch.headers["content-type"] == PROBLEM
    assert mismatch.json()["code"] == "idempotency.key_mismatch"
    retry = post(alice, body("4.00"), "http-mismatch-1")
    assert retry.content == first.content


def test_replayed_request_cannot_read_stored_response(deployment: Deployment, alice: httpx.Client) -> None:
    nonce, ts = new_nonce(), now_ms()
    first = post(alice, body("1.50"), "http-capture-1", nonce=nonce, ts=ts)
    assert first.status_code == 201
    captured = post(alice, body("1.50"), "http-capture-1", nonce=nonce, ts=ts)
    assert captured.status_code == 409
    problem = captured.json()
    assert problem["code"] == "replay.nonce_reused"
    assert "id" not in problem
    assert "idempotent-replayed" not in captured.headers


def test_stale_timestamp(alice: httpx.Client) -> None:
    response = post(alice, body(), "http-stale-1", ts=now_ms() - 60_000)
    assert response.status_code == 400
    problem = response.json()
    assert problem["code"] == "replay.timestamp_out_of_window"
    assert abs(problem["server_time"] - now_ms()) < 5_000
    assert problem["type"] == "about:blank"
    assert problem["status"] == 400


def test_keys_scoped_per_client(deployment: Deployment, alice: httpx.Client, bob: httpx.Client) -> None:
    from_alice = post(alice, body("1.00"), "shared-key-1")
    from_bob = post(bob, body("1.00", from_account="HB-1", to_account="HA-1"), "shared-key-1")
    assert from_alice.status_code == from_bob.status_code == 201
    assert from_alice.json()["id"] != from_bob.json()["id"]
    mismatch_for_bob = post(bob, body("9.00", from_account="HB-1", to_account="HA-1"), "shared-key-1")
    assert mismatch_for_bob.json()["code"] == "idempotency.key_mismatch"


def test_structured_field_key_equals_bare_key(alice: httpx.Client) -> None:
    first = post(alice, body("0.10"), '"sf-key-1"')
    retry = post(alice, body("0.10"), "sf-key-1")
    assert first.status_code == 201
    assert retry.headers.get("idempotent-replayed") == "true"
    assert retry.content == first.content


# --- business refusals are stored --------------------------------------------


@pytest.mark.parametrize(
    ("document", "status", "code"),
    [
        (body("5000.00"), 422, "transfer.insufficient_funds"),
        (body(to_account="HA-EUR"), 422, "transfer.currency_mismatch"),
        (body(to_account="NOPE"), 404, "transfer.account_not_found"),
        (body(from_account="HB-1", to_account="HA-1"), 403, "transfer.forbidden"),
    ],
)
def test_business_refusal_stored_against_key(alice: httpx.Client, document: dict, status: int, code: str) -> None:
    key = f"refusal-{uuid.uuid4()}"
    refused = post(alice, document, key)
    assert refused.status_code == status
    assert refused.headers["content-type"] == PROBLEM
    assert refused.json()["code"] == code
    retry = post(alice, document, key)
    assert retry.status_code == status
    assert retry.content == refused.content
    assert retry.headers["idempotent-replayed"] == "true"


# --- malformed requests ----------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "code"),
    [
        ("{not json", "invalid_message"),
        ("[]", "invalid_message"),
        ('{"from_account": "HA-1", "from_account": "HA-1", "to_account": "HB-1", "amount": "1.00", "currency": "USD"}', "invalid_message"),
        (json.dumps(body(amount=1.0)), "invalid_amount"),  # type: ignore[arg-type]
        (json.dumps(body(amount="1e2")), "invalid_amount"),
        (json.dumps(body(amount="NaN")), "invalid_amount"),
        ('{"from_account": "HA-1", "to_account": "HB-1", "amount": NaN, "currency": "USD"}', "invalid_message"),
        (json.dumps({**body(), "extra": 1}), "invalid_message"),
        (b"\xff\xfe not utf-8", "invalid_message"),
    ],
)
def test_malformed_body_rejected_without_consuming(deployment: Deployment, alice: httpx.Client, content, code: str) -> None:
    nonce = new_nonce()
    transfers = deployment.count("transfers_transfer")
    response = post(alice, content, f"malformed-{nonce}", nonce=nonce)
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == code
    assert deployment.count("transfers_transfer") == transfers
    # Neither the nonce nor the key was consumed.
    assert post(alice, body("0.01"), f"malformed-{nonce}", nonce=nonce).status_code == 201


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"Idempotency-Key": None}, "idempotency.key_missing"),
        ({"Idempotency-Key": ""}, "idempotency.key_missing"),
        ({"Idempotency-Key": "k" * 256}, "idempotency.key_invalid"),
        ({"Idempotency-Key": '"unterminated'}, "idempotency.key_invalid"),
        ({"X-Request-Nonce": None}, "invalid_message"),
        ({"X-Request-Nonce": "short"}, "invalid_message"),
        ({"X-Request-Timestamp": None}, "invalid_message"),
        ({"X-Request-Timestamp": "1.5e12"}, "invalid_message"),
        ({"X-Request-Timestamp": "-5"}, "invalid_message"),
        ({"X-Request-Timestamp": "9" * 40}, "invalid_message"),
        ({"X-Request-Session": "S" * 22}, "invalid_message"),
        ({"X-Request-Sequence": "1"}, "invalid_message"),
    ],
)
def test_malformed_headers_rejected(alice: httpx.Client, headers: dict, code: str) -> None:
    sent = transfer_headers("header-case-key")
    for name, value in headers.items():
        if value is None:
            sent.pop(name, None)
        else:
            sent[name] = value
    response = alice.post("/api/v1/transfers/", content=json.dumps(body()), headers=sent)
    assert response.status_code == 400
    assert response.json()["code"] == code


def test_repeated_header_rejected(alice: httpx.Client) -> None:
    headers = list(transfer_headers("repeated-key").items()) + [("Idempotency-Key", "other-key")]
    response = alice.post("/api/v1/transfers/", content=json.dumps(body()), headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "idempotency.key_invalid"
    headers = list(transfer_headers("repeated-nonce").items()) + [("X-Request-Nonce", "n" * 22)]
    response = alice.post("/api/v1/transfers/", content=json.dumps(body()), headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_message"


# daphne itself rejects \x1c-\x1e in header values with an HTML 400.
@pytest.mark.parametrize("key", ["\x1fk1", "k1\x1f", "clé"])
def test_control_or_non_ascii_key_rejected(alice: httpx.Client, key: str) -> None:
    headers = transfer_headers(None) | {"Idempotency-Key": key}
    encoded = [(name.encode(), value.encode("latin-1")) for name, value in headers.items()]
    response = alice.post("/api/v1/transfers/", content=json.dumps(body()), headers=encoded)
    assert response.status_code == 400
    assert response.json()["code"] == "idempotency.key_invalid"


def test_wrong_content_type(alice: httpx.Client) -> None:
    headers = transfer_headers("ctype-key") | {"Content-Type": "text/plain"}
    response = alice.post("/api/v1/transfers/", content=json.dumps(body()), headers=headers)
    assert response.status_code == 415
    assert response.json()["code"] == "invalid_message"


def test_oversized_body(alice: httpx.Client) -> None:
    huge = json.dumps(body(reference="r" * 10)).replace('"r', '"' + " " * 70_000 + "r", 1)
    response = post(alice, huge, "huge-key")
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM


def test_wrong_method_gets_405_problem(alice: httpx.Client) -> None:
    response = alice.get("/api/v1/transfers/")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["allow"] == "POST"
    assert response.json()["code"] == "method_not_allowed"
    assert alice.delete("/api/v1/accounts/HA-1/").status_code == 405


def test_missing_trailing_slash_is_404_not_redirect(deployment: Deployment, alice: httpx.Client) -> None:
    transfers = deployment.count("transfers_transfer")
    missing = alice.post("/api/v1/transfers", content=json.dumps(body()), headers=transfer_headers("no-slash-1"))
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM
    assert "location" not in missing.headers
    assert deployment.count("transfers_transfer") == transfers


# --- reads -------------------------------------------------------------------------


def test_get_own_transfer_only(alice: httpx.Client, bob: httpx.Client) -> None:
    created = post(alice, body("0.20"), "read-transfer-1").json()
    mine = alice.get(f"/api/v1/transfers/{created['id']}/")
    assert mine.status_code == 200
    assert mine.json() == created
    other = bob.get(f"/api/v1/transfers/{created['id']}/")
    assert other.status_code == 404
    assert other.headers["content-type"] == PROBLEM
    assert alice.get("/api/v1/transfers/not-a-uuid/").status_code == 404


def test_get_own_account_only(deployment: Deployment, alice: httpx.Client, bob: httpx.Client) -> None:
    account = alice.get("/api/v1/accounts/HA-1/")
    assert account.status_code == 200
    assert account.json() == {"id": "HA-1", "currency": "USD", "balance": f"{deployment.balance('HA-1'):.2f}"}
    assert bob.get("/api/v1/accounts/HA-1/").status_code == 404
    assert alice.get("/api/v1/accounts/NOPE/").status_code == 404


def test_server_time(alice: httpx.Client) -> None:
    response = alice.get("/api/v1/time/")
    assert response.status_code == 200
    assert abs(response.json()["server_time"] - now_ms()) < 5_000


def test_healthz(alice: httpx.Client) -> None:
    response = alice.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "replay_store": "ok"}


# --- identity ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["carol", "mallory"])
def test_unregistered_client_gets_403_problem(deployment: Deployment, name: str) -> None:
    transfers = deployment.count("transfers_transfer")
    with deployment.http(name) as client:
        response = post(client, body(), "identity-key")
    assert response.status_code == 403
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == "identity.client_unknown"
    assert deployment.count("transfers_transfer") == transfers


def test_no_certificate_fails_handshake(deployment: Deployment) -> None:
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)):
        with deployment.http(None) as client:
            client.get("/api/v1/time/")


# --- one key space for WebSocket and HTTP -----------------------------------------------


async def test_websocket_original_replayed_over_http(deployment: Deployment) -> None:
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(CommandBuilder().transfer(from_account="HA-1", to_account="HB-1", amount="6.00", idempotency_key="cross-1"))
        executed = await recv_json(connection)
    assert executed["type"] == "transfer.executed"
    async with deployment.async_http("alice") as client:
        response = await client.post("/api/v1/transfers/", content=json.dumps(body("6.00")), headers=transfer_headers("cross-1"))
    assert response.status_code == 201
    assert response.headers["idempotent-replayed"] == "true"
    assert response.json() == executed["transfer"]


async def test_http_original_replayed_over_websocket(deployment: Deployment) -> None:
    async with deployment.async_http("alice") as client:
        response = await client.post("/api/v1/transfers/", content=json.dumps(body("8.00")), headers=transfer_headers("cross-2"))
    assert response.status_code == 201
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(CommandBuilder().transfer(from_account="HA-1", to_account="HB-1", amount="8.00", idempotency_key="cross-2"))
        replayed = await recv_json(connection)
    assert replayed["type"] == "transfer.executed"
    assert replayed["replayed"] is True
    assert replayed["transfer"] == response.json()
    assert deployment.count("transfers_transfer", "idempotency_key = %s", ("cross-2",)) == 1
