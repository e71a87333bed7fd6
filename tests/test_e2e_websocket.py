"""WebSocket protocol v1 end to end: a real serve process, real TLS, real certificates."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.exceptions import InvalidMessage as HandshakeInvalidMessage

from realtime.client import CommandBuilder, new_nonce, now_ms
from tests.conftest import Pki, seed
from tests.support.databases import TestDatabases
from tests.support.e2e import Deployment, open_session, recv_json
from tests.support.servers import ServeProcess, manage, project_env

pytestmark = pytest.mark.e2e

ACCOUNTS = [
    ("A-1", "alice", "USD", "1000.00"),
    ("A-2", "alice", "USD", "500.00"),
    ("A-EUR", "alice", "EUR", "100.00"),
    ("B-1", "bob", "USD", "1000.00"),
    ("D-1", "dave", "USD", "10.00"),
]


@pytest.fixture(scope="module")
def deployment(pki: Pki, test_databases: TestDatabases, run_dir: Path) -> Iterator[Deployment]:
    database_url = test_databases.create("ws")
    seed(
        database_url,
        clients=[(name, pki.cert(name)) for name in ("alice", "bob", "dave")],
        accounts=ACCOUNTS,
    )
    server = ServeProcess(env=project_env(DATABASE_URL=database_url), pki_dir=pki.directory, log_dir=run_dir).start()
    yield Deployment(server, database_url, pki.directory)
    server.stop()


def transfer_frame(builder: CommandBuilder, amount: str = "1.00", **kwargs) -> str:
    kwargs.setdefault("from_account", "A-1")
    kwargs.setdefault("to_account", "B-1")
    return builder.transfer(amount=amount, **kwargs)


# --- handshake and identity ------------------------------------------------


async def test_welcome_frame(deployment: Deployment) -> None:
    async with deployment.connect("alice") as connection:
        welcome = await open_session(connection)
    assert welcome["client"] == "alice"
    assert welcome["next_seq"] == 1
    assert welcome["max_skew_ms"] == 30_000
    assert welcome["seq_window"] == 64
    assert isinstance(welcome["session"], str) and len(welcome["session"]) >= 22
    assert abs(welcome["server_time"] - now_ms()) < 5_000


@pytest.mark.parametrize("name", [None, "foreign", "expired"])
async def test_handshake_fails_without_trusted_certificate(deployment: Deployment, name: str | None) -> None:
    # Depending on the TLS version the client sees the server's refusal as a
    # TLS alert, a reset, or a connection closed before any HTTP response.
    with pytest.raises((ssl.SSLError, ConnectionResetError, HandshakeInvalidMessage)):
        async with deployment.connect(name) as connection:
            # With TLS 1.3 the server's alert arrives after the client's
            # handshake completes; the first read then fails.
            await recv_json(connection)


@pytest.mark.parametrize("name", ["carol", "mallory"])
async def test_unregistered_certificate_gets_403(deployment: Deployment, name: str) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with deployment.connect(name):
            pass
    assert caught.value.response.status_code == 403


async def test_browser_origin_gets_403(deployment: Deployment) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with deployment.connect("alice", origin="https://evil.example"):
            pass
    assert caught.value.response.status_code == 403


# --- transfers and replays -------------------------------------------------


async def test_transfer_executes_and_replays_are_rejected(deployment: Deployment) -> None:
    builder = CommandBuilder()
    before_a, before_b = deployment.balance("A-1"), deployment.balance("B-1")
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        frame = transfer_frame(builder, "12.34", reference="invoice 7")
        await connection.send(frame)
        executed = await recv_json(connection)
        assert executed["type"] == "transfer.executed"
        assert executed["seq"] == 1
        assert executed["replayed"] is False
        assert list(executed["transfer"])[0] == "id"
        assert executed["transfer"]["amount"] == "12.34"
        assert executed["transfer"]["reference"] == "invoice 7"

        # The captured frame, sent again on the same connection.
        await connection.send(frame)
        rejected = await recv_json(connection)
        assert rejected == {
            "type": "rejected",
            "seq": 1,
            "code": "replay.nonce_reused",
            "detail": rejected["detail"],
            "server_time": rejected["server_time"],
        }

    # And on a new connection of the same client.
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(frame)
        rejected = await recv_json(connection)
        assert rejected["code"] == "replay.nonce_reused"

    assert deployment.balance("A-1") == before_a - Decimal("12.34")
    assert deployment.balance("B-1") == before_b + Decimal("12.34")
    assert deployment.ledger_sum() == 0


async def test_same_nonce_accepted_for_another_client(deployment: Deployment) -> None:
    nonce = new_nonce()
    async with deployment.connect("alice") as alice, deployment.connect("bob") as bob:
        await open_session(alice)
        await open_session(bob)
        await alice.send(CommandBuilder().transfer(from_account="A-1", to_account="B-1", amount="1.00", nonce=nonce))
        assert (await recv_json(alice))["type"] == "transfer.executed"
        await bob.send(CommandBuilder().transfer(from_account="B-1", to_account="A-1", amount="1.00", nonce=nonce))
        assert (await recv_json(bob))["type"] == "transfer.executed"
        await alice.send(CommandBuilder(next_seq=2).transfer(from_account="A-1", to_account="B-1", amount="1.00", nonce=nonce))
        assert (await recv_json(alice))["code"] == "replay.nonce_reused"


async def test_stale_timestamp_rejected(deployment: Deployment) -> None:
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        for offset in (-31_000, 31_000):
            await connection.send(transfer_frame(CommandBuilder(clock_offset_ms=offset)))
            rejected = await recv_json(connection)
            assert rejected["code"] == "replay.timestamp_out_of_window"
            assert abs(rejected["server_time"] - now_ms()) < 5_000


async def test_sequence_reuse_and_window(deployment: Deployment) -> None:
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(transfer_frame(CommandBuilder(next_seq=100)))
        assert (await recv_json(connection))["type"] == "transfer.executed"
        await connection.send(transfer_frame(CommandBuilder(next_seq=100)))
        reused = await recv_json(connection)
        assert reused["code"] == "replay.sequence_reused"
        assert reused["expected_seq"] == 101
        await connection.send(transfer_frame(CommandBuilder(next_seq=36)))
        too_old = await recv_json(connection)
        assert too_old["code"] == "replay.sequence_too_old"
        assert too_old["window_floor"] == 37
        await connection.send(transfer_frame(CommandBuilder(next_seq=37)))
        assert (await recv_json(connection))["type"] == "transfer.executed"


async def test_idempotent_retry_returns_original(deployment: Deployment) -> None:
    builder = CommandBuilder()
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(transfer_frame(builder, "2.00", idempotency_key="ws-retry-1"))
        first = await recv_json(connection)
        balance = deployment.balance("A-1")
        await connection.send(transfer_frame(builder, "2.00", idempotency_key="ws-retry-1"))
        retry = await recv_json(connection)
        assert retry["type"] == "transfer.executed"
        assert retry["replayed"] is True
        assert retry["seq"] == 2
        assert retry["transfer"] == first["transfer"]
        assert deployment.balance("A-1") == balance

        await connection.send(transfer_frame(builder, "3.00", idempotency_key="ws-retry-1"))
        mismatch = await recv_json(connection)
        assert mismatch["code"] == "idempotency.key_mismatch"
    assert deployment.count("transfers_transfer", "idempotency_key = %s", ("ws-retry-1",)) == 1


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"amount": "5000.00"}, "transfer.insufficient_funds"),
        ({"from_account": "B-1", "to_account": "A-1"}, "transfer.forbidden"),
        ({"to_account": "NOPE-1"}, "transfer.account_not_found"),
        ({"to_account": "A-EUR"}, "transfer.currency_mismatch"),
        ({"currency": "EUR", "from_account": "A-EUR", "to_account": "A-2"}, "transfer.currency_mismatch"),
    ],
)
async def test_business_refusal_consumes_nonce_and_sequence(deployment: Deployment, overrides: dict, code: str) -> None:
    builder = CommandBuilder()
    transfers_before = deployment.count("transfers_transfer")
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        kwargs = {"from_account": "A-1", "to_account": "B-1", "amount": "1.00", **overrides}
        frame = builder.transfer(**kwargs)
        await connection.send(frame)
        refused = await recv_json(connection)
        assert refused["type"] == "rejected"
        assert refused["code"] == code
        assert refused["seq"] == 1
        await connection.send(frame)
        assert (await recv_json(connection))["code"] == "replay.nonce_reused"
        sequence_reuse = json.loads(frame) | {"nonce": new_nonce()}
        await connection.send(json.dumps(sequence_reuse))
        assert (await recv_json(connection))["code"] == "replay.sequence_reused"
    assert deployment.count("transfers_transfer") == transfers_before


# --- malformed frames --------------------------------------------------------


def _valid(seq: int, nonce: str) -> dict:
    return {
        "type": "transfer",
        "seq": seq,
        "ts": now_ms(),
        "nonce": nonce,
        "idempotency_key": f"malformed-{nonce}",
        "transfer": {"from_account": "A-2", "to_account": "B-1", "amount": "0.01", "currency": "USD"},
    }


def _with(path: tuple[str, ...], value: object):
    def mutate(frame: dict) -> dict:
        target = frame
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return frame

    return mutate


def _without(*path: str):
    def mutate(frame: dict) -> dict:
        target = frame
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return frame

    return mutate


MALFORMED_FIELDS = {
    "seq true": (_with(("seq",), True), "invalid_message"),
    "seq float": (_with(("seq",), 7.0), "invalid_message"),
    "seq string": (_with(("seq",), "7"), "invalid_message"),
    "seq zero": (_with(("seq",), 0), "invalid_message"),
    "seq negative": (_with(("seq",), -1), "invalid_message"),
    "seq 2**53": (_with(("seq",), 2**53), "invalid_message"),
    "seq huge": (_with(("seq",), 10**300), "invalid_message"),
    "ts string": (_with(("ts",), "1700000000000"), "invalid_message"),
    "ts float": (_with(("ts",), 1.7e12), "invalid_message"),
    "ts null": (_with(("ts",), None), "invalid_message"),
    "nonce short": (_with(("nonce",), "short"), "invalid_message"),
    "nonce long": (_with(("nonce",), "n" * 65), "invalid_message"),
    "nonce space": (_with(("nonce",), "nonce with spaces!!"), "invalid_message"),
    "nonce number": (_with(("nonce",), 12345678901234567890), "invalid_message"),
    "key empty": (_with(("idempotency_key",), ""), "invalid_message"),
    "key long": (_with(("idempotency_key",), "k" * 256), "invalid_message"),
    "key non-ascii": (_with(("idempotency_key",), "clé"), "invalid_message"),
    "key control": (_with(("idempotency_key",), "a\nb"), "invalid_message"),
    "amount number": (_with(("transfer", "amount"), 1.5), "invalid_amount"),
    "amount integer": (_with(("transfer", "amount"), 1), "invalid_amount"),
    "amount exponent": (_with(("transfer", "amount"), "1e3"), "invalid_amount"),
    "amount NaN": (_with(("transfer", "amount"), "NaN"), "invalid_amount"),
    "amount Infinity": (_with(("transfer", "amount"), "Infinity"), "invalid_amount"),
    "amount negative": (_with(("transfer", "amount"), "-1.00"), "invalid_amount"),
    "amount zero": (_with(("transfer", "amount"), "0.00"), "invalid_amount"),
    "amount 3 places": (_with(("transfer", "amount"), "1.001"), "invalid_amount"),
    "amount leading zero": (_with(("transfer", "amount"), "01.00"), "invalid_amount"),
    "amount huge": (_with(("transfer", "amount"), "9" * 40), "invalid_amount"),
    "amount spaces": (_with(("transfer", "amount"), " 1.00"), "invalid_amount"),
    "currency lower": (_with(("transfer", "currency"), "usd"), "invalid_message"),
    "account empty": (_with(("transfer", "from_account"), ""), "invalid_message"),
    "account object": (_with(("transfer", "to_account"), {"id": "B-1"}), "invalid_message"),
    "same account": (_with(("transfer", "to_account"), "A-2"), "invalid_message"),
    "reference control": (_with(("transfer", "reference"), "a\x00b"), "invalid_message"),
    "reference long": (_with(("transfer", "reference"), "r" * 141), "invalid_message"),
    "transfer missing": (_without("transfer"), "invalid_message"),
    "amount missing": (_without("transfer", "amount"), "invalid_message"),
    "nonce missing": (_without("nonce"), "invalid_message"),
    "unknown field": (_with(("extra",), 1), "invalid_message"),
    "unknown transfer field": (_with(("transfer", "fee"), "1.00"), "invalid_message"),
    "transfer array": (_with(("transfer",), []), "invalid_message"),
    "type unknown": (_with(("type",), "withdraw"), "invalid_message"),
    "type missing": (_without("type"), "invalid_message"),
}

RAW_MALFORMED = {
    "not json": "{not json",
    "json array": "[1, 2]",
    "json string": '"transfer"',
    "empty": "",
    "NaN constant": '{"type": "transfer", "seq": NaN}',
    "Infinity constant": '{"type": "transfer", "ts": Infinity}',
    "deep nesting": "[" * 100_00 + "]" * 100_00,
    "huge integer": '{"seq": ' + "9" * 5000 + "}",
}


@pytest.mark.parametrize("case", sorted(MALFORMED_FIELDS))
async def test_malformed_field_rejected_without_consuming(deployment: Deployment, case: str) -> None:
    mutate, code = MALFORMED_FIELDS[case]
    nonce = new_nonce()
    transfers_before = deployment.count("transfers_transfer")
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(json.dumps(mutate(_valid(1, nonce))))
        rejected = await recv_json(connection)
        assert rejected["type"] == "rejected"
        assert rejected["code"] == code
        assert isinstance(rejected["detail"], str) and rejected["detail"]
        assert deployment.count("transfers_transfer") == transfers_before
        # The same nonce and sequence number in a valid frame still pass.
        await connection.send(json.dumps(_valid(1, nonce)))
        assert (await recv_json(connection))["type"] == "transfer.executed"


@pytest.mark.parametrize("case", sorted(RAW_MALFORMED))
async def test_raw_malformed_frame_rejected(deployment: Deployment, case: str) -> None:
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(RAW_MALFORMED[case])
        rejected = await recv_json(connection)
        assert rejected["type"] == "rejected"
        assert rejected["code"] == "invalid_message"
        assert rejected["seq"] is None
        # The socket stays open.
        await connection.send(json.dumps(_valid(1, new_nonce())))
        assert (await recv_json(connection))["type"] == "transfer.executed"


async def test_duplicate_keys_anywhere_rejected(deployment: Deployment) -> None:
    nonce = new_nonce()
    frame = json.dumps(_valid(1, nonce))
    nested_duplicate = frame.replace('"currency": "USD"', '"currency": "USD", "currency": "EUR"')
    top_duplicate = frame.replace('"seq": 1', '"seq": 1, "seq": 2')
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        for text in (nested_duplicate, top_duplicate):
            await connection.send(text)
            rejected = await recv_json(connection)
            assert rejected["code"] == "invalid_message"
            assert "duplicate" in rejected["detail"]
        await connection.send(frame)
        assert (await recv_json(connection))["type"] == "transfer.executed"


async def test_seq_echoed_when_readable(deployment: Deployment) -> None:
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(json.dumps(_with(("nonce",), "bad")(_valid(9, "x"))))
        assert (await recv_json(connection))["seq"] == 9


async def test_binary_frame_rejected(deployment: Deployment) -> None:
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(json.dumps(_valid(1, new_nonce())).encode())
        rejected = await recv_json(connection)
        assert rejected == {"type": "rejected", "seq": None, "code": "invalid_message", "detail": rejected["detail"]}
        await connection.send(json.dumps(_valid(1, new_nonce())))
        assert (await recv_json(connection))["type"] == "transfer.executed"


async def test_oversized_frame_closes_with_1009(deployment: Deployment) -> None:
    async with deployment.connect("alice", max_size=None) as connection:
        await open_session(connection)
        await connection.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as caught:
            await recv_json(connection)
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 1009


async def test_frame_at_size_limit_is_read(deployment: Deployment) -> None:
    frame = _valid(1, new_nonce())
    frame["transfer"]["reference"] = "r"
    text = json.dumps(frame)
    padded = text[:-1] + " " * (64 * 1024 - len(text)) + "}"
    assert len(padded) == 64 * 1024
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(padded)
        assert (await recv_json(connection))["type"] == "transfer.executed"


async def test_fragmented_oversized_message_closes(deployment: Deployment) -> None:
    async with deployment.connect("alice", max_size=None) as connection:
        await open_session(connection)

        async def fragments():
            # 17 fragments of 4 KiB pass the 64 KiB limit by 4 KiB. Sending
            # no more than that keeps unread data from piling up at the server,
            # whose kernel would respond to the close with a reset and discard the
            # close frame the client is meant to read.
            for _ in range(17):
                yield "y" * 4096

        await connection.send(fragments())
        with pytest.raises(ConnectionClosed) as caught:
            await recv_json(connection)
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 1009


# --- revocation ----------------------------------------------------------------


async def test_deactivated_client_refused(deployment: Deployment) -> None:
    async with deployment.connect("dave") as connection:
        await open_session(connection)
        manage("deactivate_client", "dave", env=project_env(DATABASE_URL=deployment.database_url))
        # The in-memory channel layer cannot reach this process, so the open
        # socket is refused at its next command and closed with 4001.
        await connection.send(CommandBuilder().transfer(from_account="D-1", to_account="B-1", amount="1.00"))
        rejected = await recv_json(connection)
        assert rejected["code"] == "identity.client_inactive"
        with pytest.raises(ConnectionClosed) as caught:
            await recv_json(connection)
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 4001
    with pytest.raises(InvalidStatus) as refused:
        async with deployment.connect("dave"):
            pass
    assert refused.value.response.status_code == 403
    assert deployment.balance("D-1") == Decimal("10.00")


async def test_many_commands_on_one_socket(deployment: Deployment) -> None:
    builder = CommandBuilder()
    async with deployment.connect("bob") as connection:
        await open_session(connection)
        frames = [builder.transfer(from_account="B-1", to_account="A-2", amount="0.01") for _ in range(50)]
        for frame in frames:
            await connection.send(frame)
        replies = [await recv_json(connection) for _ in frames]
    assert [reply["seq"] for reply in replies] == list(range(1, 51))
    assert all(reply["type"] == "transfer.executed" for reply in replies)


async def test_server_survives_abrupt_disconnects(deployment: Deployment) -> None:
    for _ in range(5):
        connection = await deployment.connect("alice")
        await open_session(connection)
        connection.transport.abort()
    async with deployment.connect("alice") as connection:
        await open_session(connection)
    await asyncio.sleep(0)


@pytest.mark.parametrize("path", ["/ws/v1/transfers", "/ws/v2/transfers/", "/"])
async def test_unknown_path_gets_403(deployment: Deployment, path: str) -> None:
    url = deployment.server.ws_url.replace("/ws/v1/transfers/", path)
    with pytest.raises(InvalidStatus) as caught:
        async with websockets.connect(url, ssl=deployment.ssl_context("alice"), open_timeout=10):
            pass
    assert caught.value.response.status_code == 403
    assert "Traceback" not in deployment.server.log_text()
