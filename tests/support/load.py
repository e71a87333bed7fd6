"""Client load from several processes, for the exactly-once tests.

Functions here run in child processes started with the "spawn" method, so
they import nothing from Django and take only picklable arguments.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from realtime.client import client_ssl_context, new_nonce, now_ms


def post_same_command(
    base_urls: list[str], pki_dir: str, client: str, key: str, body: dict, concurrency: int
) -> list[tuple[int, str, str | None]]:
    """POST one command ``concurrency`` times at once, each with a fresh nonce.

    Returns (status, body text, Idempotent-Replayed header) per request.
    """
    directory = Path(pki_dir)
    context = client_ssl_context(directory / "ca.pem", directory / f"{client}.pem", directory / f"{client}.key")

    async def one(index: int, http: httpx.AsyncClient) -> tuple[int, str, str | None]:
        headers = {
            "Content-Type": "application/json",
            "X-Request-Timestamp": str(now_ms()),
            "X-Request-Nonce": new_nonce(),
            "Idempotency-Key": key,
        }
        url = base_urls[index % len(base_urls)] + "/api/v1/transfers/"
        response = await http.post(url, content=json.dumps(body), headers=headers)
        return response.status_code, response.text, response.headers.get("idempotent-replayed")

    async def run() -> list[tuple[int, str, str | None]]:
        async with httpx.AsyncClient(verify=context, timeout=30) as http:
            return list(await asyncio.gather(*(one(index, http) for index in range(concurrency))))

    return asyncio.run(run())
