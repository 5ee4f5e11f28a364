"""The fleet event stream: campaign and device state changes as Server-Sent Events.

Server processes share nothing but the database, so the stream is read from it: every
second each open stream asks for what is new since its cursor (one indexed range read
per table), whichever process wrote it:

* ``device``: a device changed state in a campaign (``device_state_events``):
  ``{"campaign_id", "serial", "state", "error_code", "at"}``;
* ``device`` with ``"joined": true``: a device joined a dynamic campaign (audited as
  ``campaign.join``): ``{"campaign_id", "serial", "state": "pending", "phase",
  "joined", "at"}``;
* ``campaign``: a campaign was created, paused, resumed, cancelled, approved, a device
  joined it or a device of it changed state: ``{"campaign_id", "status", "phase",
  "states"}`` (device count per state);
* ``check-ins``: gateways checked in (for their devices) since the last event:
  ``{"gateways", "at"}``.

Each event's ``id`` is the cursor after it; a client that reconnects with
``Last-Event-ID`` continues from there (an unknown cursor starts from now). A
comment line every 15 s keeps proxies from closing an idle stream; a stream ends
after 5 minutes (the browser's EventSource reconnects by itself, and is authenticated
again) or as soon as its credential or session ends. docs/fleet.md, "Event stream".
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, func, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse

from bmsfw.fleet.clock import Clock
from bmsfw.fleet.db import read_only_engine
from bmsfw.fleet.errors import EventStreamNotAcceptedError
from bmsfw.fleet.models import (
    AuditEntry,
    Campaign,
    CampaignDevice,
    Device,
    DeviceStateEvent,
    Gateway,
)

__all__ = ["Cursor", "FleetEvent", "FleetEvents", "event_stream_response", "sse_stream"]

_EV = cast(Table, DeviceStateEvent.__table__)
_CD = cast(Table, CampaignDevice.__table__)
_DEV = cast(Table, Device.__table__)
_AUD = cast(Table, AuditEntry.__table__)
_CAMP = cast(Table, Campaign.__table__)
_GW = cast(Table, Gateway.__table__)
MAX_EVENTS_PER_POLL = 500


@dataclass(frozen=True)
class Cursor:
    state_event: int  # last device_state_events.id sent
    audit: int  # last audit_log.id looked at
    seen_at: datetime  # check-ins after this are new

    def encode(self) -> str:
        return f"{self.state_event}-{self.audit}-{int(self.seen_at.timestamp() * 1000)}"

    @staticmethod
    def parse(text: str) -> Cursor | None:
        parts = text.split("-")
        if len(parts) != 3 or not all(p.isdigit() and len(p) < 16 for p in parts):
            return None
        return Cursor(
            int(parts[0]), int(parts[1]), datetime.fromtimestamp(int(parts[2]) / 1000, UTC)
        )


@dataclass(frozen=True)
class FleetEvent:
    id: str
    kind: str
    data: dict[str, Any]

    def sse(self) -> bytes:
        # json.dumps escapes newlines: one data line, nothing a value can inject.
        return f"id: {self.id}\nevent: {self.kind}\ndata: {json.dumps(self.data)}\n\n".encode()


class FleetEvents:
    """Reads what changed in the fleet since a cursor."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._reader = read_only_engine(engine)
        self.clock = clock

    def start(self) -> Cursor:
        """A cursor at the current end of the history (a new stream sends what follows)."""
        with self._reader.connect() as conn:
            last_event = conn.execute(select(func.max(_EV.c.id))).scalar_one()
            last_audit = conn.execute(select(func.max(_AUD.c.id))).scalar_one()
        return Cursor(last_event or 0, last_audit or 0, self.clock.now())

    def poll(self, cursor: Cursor) -> tuple[list[FleetEvent], Cursor]:
        now = self.clock.now()
        with self._reader.connect() as conn:
            changes = conn.execute(
                select(
                    _EV.c.id,
                    _EV.c.state,
                    _EV.c.error_code,
                    _EV.c.at,
                    _CD.c.campaign_id,
                    _DEV.c.serial,
                )
                .join(_CD, _CD.c.id == _EV.c.campaign_device_id)
                .join(_DEV, _DEV.c.id == _CD.c.device_id)
                .where(_EV.c.id > cursor.state_event)
                .order_by(_EV.c.id)
                .limit(MAX_EVENTS_PER_POLL)
            ).all()
            audits = conn.execute(
                select(_AUD.c.id, _AUD.c.target, _AUD.c.action, _AUD.c.at, _AUD.c.detail)
                .where(_AUD.c.id > cursor.audit, _AUD.c.action.like("campaign.%"))
                .order_by(_AUD.c.id)
                .limit(MAX_EVENTS_PER_POLL)
            ).all()
            last_audit = conn.execute(
                select(func.max(_AUD.c.id)).where(_AUD.c.id > cursor.audit)
            ).scalar_one()
            # Gateways, not devices: a handful of rows to read every second, not the fleet.
            checked_in = conn.execute(
                select(func.count()).where(
                    _GW.c.last_seen_at > cursor.seen_at, _GW.c.last_seen_at <= now
                )
            ).scalar_one()
            touched = {r.campaign_id for r in changes}
            for a in audits:
                kind, _, number = str(a.target).partition(":")
                if kind == "campaign" and number.isdigit():
                    touched.add(int(number))
            campaigns = _campaign_states(conn, sorted(touched))
        state_event = changes[-1].id if changes else cursor.state_event
        if len(audits) == MAX_EVENTS_PER_POLL:  # more to read: continue after the last seen
            last_audit = audits[-1].id
        after = Cursor(
            state_event, last_audit or cursor.audit, now if checked_in else cursor.seen_at
        )
        ident = after.encode()
        events = [
            FleetEvent(
                ident,
                "device",
                {
                    "campaign_id": r.campaign_id,
                    "serial": r.serial,
                    "state": r.state,
                    "error_code": r.error_code,
                    "at": r.at.isoformat(),
                },
            )
            for r in changes
        ]
        events += [_joined(ident, a) for a in audits if a.action == "campaign.join"]
        events += [FleetEvent(ident, "campaign", c) for c in campaigns]
        if checked_in:
            events.append(
                FleetEvent(ident, "check-ins", {"gateways": int(checked_in), "at": now.isoformat()})
            )
        return events, after


def _joined(ident: str, entry: Any) -> FleetEvent:
    """The ``device`` event of a ``campaign.join`` audit entry."""
    detail = entry.detail or {}
    return FleetEvent(
        ident,
        "device",
        {
            "campaign_id": int(str(entry.target).partition(":")[2]),
            "serial": detail.get("device", ""),
            "state": "pending",
            "phase": detail.get("phase"),
            "joined": True,
            "at": entry.at.isoformat(),
        },
    )


def _campaign_states(conn: Any, ids: list[int]) -> list[dict[str, Any]]:
    if not ids:
        return []
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    for campaign_id, state, n in conn.execute(
        select(_CD.c.campaign_id, _CD.c.state, func.count())
        .where(_CD.c.campaign_id.in_(ids))
        .group_by(_CD.c.campaign_id, _CD.c.state)
    ):
        counts[campaign_id][state] = int(n)
    return [
        {"campaign_id": r.id, "status": r.status, "phase": r.current_phase, "states": counts[r.id]}
        for r in conn.execute(
            select(_CAMP.c.id, _CAMP.c.status, _CAMP.c.current_phase)
            .where(_CAMP.c.id.in_(ids))
            .order_by(_CAMP.c.id)
        )
    ]


async def sse_stream(
    events: FleetEvents,
    cursor: Cursor,
    still_allowed: Callable[[], bool],
    *,
    poll_s: float = 1.0,
    recheck_s: float = 10.0,
    heartbeat_s: float = 15.0,
    max_s: float = 300.0,
) -> AsyncIterator[bytes]:
    """The SSE body: events after ``cursor`` until ``max_s`` or ``still_allowed()`` fails."""
    yield b"retry: 2000\n: bmsfw fleet events\n\n"
    started = last_check = last_sent = time.monotonic()
    while time.monotonic() - started < max_s:
        batch, cursor = await run_in_threadpool(events.poll, cursor)
        for event in batch:
            yield event.sse()
        now = time.monotonic()
        if batch:
            last_sent = now
        elif now - last_sent >= heartbeat_s:
            yield b": keep-alive\n\n"
            last_sent = now
        if now - last_check >= recheck_s:
            if not await run_in_threadpool(still_allowed):
                return
            last_check = now
        await asyncio.sleep(poll_s)


async def event_stream_response(
    request: Request, events: FleetEvents, still_allowed: Callable[[], bool]
) -> StreamingResponse:
    """The ``text/event-stream`` answer for an authorised request (API or dashboard).

    Only for a request that accepts ``text/event-stream`` (E651 otherwise): a client
    that expects one answer would wait for the stream's end, minutes later.
    """
    if "text/event-stream" not in request.headers.get("accept", ""):
        raise EventStreamNotAcceptedError("send 'Accept: text/event-stream' for the event stream")
    cursor = Cursor.parse(request.headers.get("last-event-id", "")[:64])
    if cursor is None:
        cursor = await run_in_threadpool(events.start)
    return StreamingResponse(
        sse_stream(events, cursor, still_allowed),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
