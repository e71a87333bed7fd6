"""Bench-only WebSocket consumers: the bare baseline and the product without its ledger."""

from __future__ import annotations

import datetime as dt
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from consumers.transfers import TransferConsumer
from transfers.service import TransferOutcome
from transfers.validation import TransferRequest

__all__ = ["EchoConsumer", "ReplayCheckedConsumer"]

# A transfer object of the size the ledger path returns.
_EXECUTED_BODY = (
    '{"id":"00000000-0000-4000-8000-000000000000","from_account":"S-0","to_account":"T-0",'
    '"amount":"0.01","currency":"USD","reference":"","created_at":"2026-01-01T00:00:00.000Z"}'
)


class EchoConsumer(AsyncJsonWebsocketConsumer):
    """The baseline: a bare Channels JSON consumer that sends every frame back."""

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.send_json(content)


class ReplayCheckedConsumer(TransferConsumer):
    """The product's consumer with every parse and replay check, but no ledger write.

    Only ``execute`` differs: it returns a fixed executed outcome instead of
    running the transfer in the database.
    """

    async def execute(self, key: str, request: TransferRequest) -> TransferOutcome:
        return TransferOutcome(
            status=201,
            code=None,
            body=_EXECUTED_BODY,
            replayed=False,
            key_expires_at=dt.datetime.now(dt.timezone.utc),
        )
