"""The main job end to end on the embedded default: ``python -m realtime.demo``.

It builds a throwaway deployment under var/demo/: SQLite, in-memory replay
store and channel layer, development certificates. It starts ``serve`` on a
free loopback port and runs a trading client through the scenarios below.
It prints each outcome and the final balances, stops the server, and exits
0 only if every outcome was the expected one.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websockets

from realtime.client import CommandBuilder, client_ssl_context, new_nonce, now_ms
from realtime.pki import Authority

ROOT = Path(__file__).resolve().parent.parent
# DEMO_DIR moves the throwaway deployment, e.g. into a test's temporary directory.
WORK_DIR = Path(os.environ.get("DEMO_DIR") or ROOT / "var" / "demo").resolve()


@dataclass
class Outcome:
    scenario: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.expected == self.got


class Demo:
    def __init__(self) -> None:
        self.pki = WORK_DIR / "pki"
        self.env = {
            **{key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "REDIS_CLUSTER")},
            "DATABASE_URL": f"sqlite:///{WORK_DIR / 'demo.sqlite3'}",
            "DJANGO_SETTINGS_MODULE": "realtime.settings",
            "PYTHONUNBUFFERED": "1",
        }
        self.outcomes: list[Outcome] = []
        self.server: subprocess.Popen[str] | None = None
        self.port = 0

    # --- set-up -------------------------------------------------------------

    def manage(self, *args: str) -> None:
        subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=self.env, check=True, stdout=subprocess.DEVNULL)

    def set_up(self) -> None:
        shutil.rmtree(WORK_DIR, ignore_errors=True)
        WORK_DIR.mkdir(parents=True)
        print("Setting up a throwaway deployment in", WORK_DIR)
        self.manage("migrate", "--noinput", "-v0")
        self.manage("devpki", "--out", str(self.pki), "--client", "alice", "--client", "bob")
        self.manage("register_client", "alice", str(self.pki / "alice.pem"))
        self.manage("register_client", "bob", str(self.pki / "bob.pem"))
        self.manage("open_account", "ALICE-USD", "--owner", "alice", "--currency", "USD", "--balance", "1000.00")
        self.manage("open_account", "BOB-USD", "--owner", "bob", "--currency", "USD", "--balance", "1000.00")
        # A client certificate from a CA the server does not trust.
        stranger = Authority("Untrusted demo CA").issue_client("alice")
        stranger.write(self.pki / "stranger.pem", self.pki / "stranger.key")

    def start_server(self) -> None:
        self.server = subprocess.Popen(
            [
                sys.executable, str(ROOT / "manage.py"), "serve", "--host", "127.0.0.1", "--port", "0",
                "--tls-cert", str(self.pki / "server.pem"), "--tls-key", str(self.pki / "server.key"),
                "--client-ca", str(self.pki / "ca.pem"),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=open(WORK_DIR / "server.log", "w"),
            text=True,
        )
        assert self.server.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.server.stdout.readline()
            if line.startswith("Listening on https://"):
                self.port = int(line.rsplit(":", 1)[1])
                print(f"Server listening on https://127.0.0.1:{self.port} (log: {WORK_DIR / 'server.log'})\n")
                return
            if not line and self.server.poll() is not None:
                break
        raise RuntimeError(f"the server did not start; see {WORK_DIR / 'server.log'}")

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()

    # --- clients ------------------------------------------------------------

    def context(self, name: str | None) -> ssl.SSLContext:
        if name is None:
            return client_ssl_context(self.pki / "ca.pem")
        return client_ssl_context(self.pki / "ca.pem", self.pki / f"{name}.pem", self.pki / f"{name}.key")

    def connect(self, name: str | None) -> Any:
        return websockets.connect(f"wss://localhost:{self.port}/ws/v1/transfers/", ssl=self.context(name), open_timeout=10)

    def record(self, scenario: str, expected: str, got: str) -> None:
        self.outcomes.append(Outcome(scenario, expected, got))

    def http(self, name: str, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict[str, str], dict]:
        connection = http.client.HTTPSConnection("localhost", self.port, context=self.context(name), timeout=10)
        try:
            connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers or {})
            response = connection.getresponse()
            return response.status, {key.lower(): value for key, value in response.getheaders()}, json.loads(response.read())
        finally:
            connection.close()

    @staticmethod
    def outcome_of(reply: dict) -> str:
        if reply["type"] == "transfer.executed":
            return "executed (replayed)" if reply["replayed"] else "executed"
        return reply.get("code", reply["type"])

    async def websocket_scenarios(self) -> None:
        builder = CommandBuilder()
        transfer = {"from_account": "ALICE-USD", "to_account": "BOB-USD"}
        async with self.connect("alice") as alice:
            json.loads(await alice.recv())
            for amount in ("100.00", "25.50"):
                await alice.send(builder.transfer(amount=amount, **transfer))
                self.record(f"transfer {amount} over wss", "executed", self.outcome_of(json.loads(await alice.recv())))
            captured = builder.transfer(amount="10.00", idempotency_key="demo-retry", **transfer)
            await alice.send(captured)
            self.record("transfer 10.00 over wss", "executed", self.outcome_of(json.loads(await alice.recv())))
            await alice.send(captured)
            self.record("captured frame resent, same connection", "replay.nonce_reused", self.outcome_of(json.loads(await alice.recv())))
            await alice.send(builder.transfer(amount="10.00", idempotency_key="demo-retry", **transfer))
            self.record("retry with same key, fresh nonce", "executed (replayed)", self.outcome_of(json.loads(await alice.recv())))
            stale = CommandBuilder(next_seq=builder.next_seq, clock_offset_ms=-120_000)
            await alice.send(stale.transfer(amount="1.00", **transfer))
            self.record("stale timestamp (2 minutes old)", "replay.timestamp_out_of_window", self.outcome_of(json.loads(await alice.recv())))
            builder.next_seq += 1
            await alice.send(builder.transfer(amount="5000.00", **transfer))
            self.record("transfer beyond the balance", "transfer.insufficient_funds", self.outcome_of(json.loads(await alice.recv())))

        async with self.connect("alice") as alice:
            json.loads(await alice.recv())
            await alice.send(captured)
            self.record("captured frame resent, new connection", "replay.nonce_reused", self.outcome_of(json.loads(await alice.recv())))

        for name, label in ((None, "no client certificate"), ("stranger", "certificate from another CA")):
            try:
                async with self.connect(name) as connection:
                    await connection.recv()
                got = "connected"
            except (ssl.SSLError, OSError, websockets.exceptions.WebSocketException):
                got = "handshake refused"
            self.record(label, "handshake refused", got)

    def http_scenarios(self) -> None:
        body = {"from_account": "BOB-USD", "to_account": "ALICE-USD", "amount": "40.00", "currency": "USD"}
        nonce, ts = new_nonce(), now_ms()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": "demo-http-1",
            "X-Request-Nonce": nonce,
            "X-Request-Timestamp": str(ts),
        }
        status, _, _ = self.http("bob", "POST", "/api/v1/transfers/", body, headers)
        self.record("transfer 40.00 over HTTPS", "201", str(status))
        retry = headers | {"X-Request-Nonce": new_nonce(), "X-Request-Timestamp": str(now_ms())}
        status, response_headers, _ = self.http("bob", "POST", "/api/v1/transfers/", body, retry)
        replayed = response_headers.get("idempotent-replayed") == "true"
        self.record("HTTPS retry with Idempotency-Key", "201 replayed", f"{status}{' replayed' if replayed else ''}")
        status, _, problem = self.http("bob", "POST", "/api/v1/transfers/", body, headers)
        self.record("captured HTTPS request resent", "409 replay.nonce_reused", f"{status} {problem.get('code')}")

    def balances(self) -> list[tuple[str, str]]:
        rows = []
        for name, account in (("alice", "ALICE-USD"), ("bob", "BOB-USD")):
            _, _, document = self.http(name, "GET", f"/api/v1/accounts/{account}/")
            rows.append((account, f"{document['balance']} {document['currency']}"))
        return rows

    # --- report -------------------------------------------------------------

    def report(self, balances: list[tuple[str, str]]) -> bool:
        width = max(len(outcome.scenario) for outcome in self.outcomes)
        expected_width = max(len(outcome.expected) for outcome in self.outcomes)
        print(f"{'scenario':<{width}}  {'expected':<{expected_width}}  {'got':<{expected_width}}  ok")
        print("-" * (width + 2 * expected_width + 8))
        for outcome in self.outcomes:
            mark = "yes" if outcome.ok else "NO"
            print(f"{outcome.scenario:<{width}}  {outcome.expected:<{expected_width}}  {outcome.got:<{expected_width}}  {mark}")
        print("\nFinal balances")
        for account, balance in balances:
            print(f"  {account:<10} {balance:>12}")
        expected_balances = [("ALICE-USD", "904.50 USD"), ("BOB-USD", "1095.50 USD")]
        balances_ok = balances == expected_balances
        if not balances_ok:
            print(f"  expected {expected_balances}")
        return balances_ok and all(outcome.ok for outcome in self.outcomes)

    def run(self) -> int:
        self.set_up()
        try:
            self.start_server()
            asyncio.run(self.websocket_scenarios())
            self.http_scenarios()
            passed = self.report(self.balances())
        finally:
            self.stop_server()
        print("\nAll outcomes as expected." if passed else "\nSome outcomes differ from the expected ones.")
        return 0 if passed else 1


def main() -> int:
    return Demo().run()


if __name__ == "__main__":
    sys.exit(main())
