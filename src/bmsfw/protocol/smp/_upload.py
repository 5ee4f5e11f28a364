"""The image upload with a window of requests in flight (MCUmgr ``buf_count``).

smpclient's ``SMPClient.upload`` sends one chunk and waits for its answer
before the next: on a serial line the line then idles while the BMS writes
flash and answers, and the host polls for the answer. Here the first chunk
goes as smpclient sends it (``off=0`` with ``len`` and ``sha``: the BMS answers
with its own offset, which is how an interrupted upload resumes), then up to
``window`` chunks are in flight: the next is on the wire while the BMS handles
the previous one. Each chunk is filled to the transport's limit as smpclient
fills it (``get_max_cbor_and_data_size``). Every answer is checked in order (SMP
sequence number, then the offset): when the BMS wants another offset than the
end of the chunk it answered, the answers still in flight are read and dropped
and the upload goes on from the BMS's offset, as smpclient does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from smp import header as smpheader
from smpclient import SMPClient
from smpclient.exceptions import SMPBadSequence, SMPUploadError
from smpclient.generics import error
from smpclient.requests.image_management import ImageUploadWrite

__all__ = ["exchange", "receive_answer", "send_request", "windowed_upload"]

log = logging.getLogger(__name__)

#: Answers to other requests read while waiting for one answer (kept for their request).
MAX_STALE_ANSWERS = 8


# Answers read off a transport that belong to another request than the one being
# waited for, by sequence number. With upload chunks in flight the pipeline still
# asks other things between two chunks (the telemetry watch during the transfer): the
# chunk's answer may arrive first and must wait for the upload, not be thrown away
# (that was a lost answer and an E395 after 10 s, more often the busier the machine).
# Answers to requests given up on (a time-out) are dropped when they come.
@dataclass
class _Answers:
    kept: dict[int, bytes] = field(default_factory=dict)
    abandoned: set[int] = field(default_factory=set)


_ANSWERS: weakref.WeakKeyDictionary[Any, _Answers] = weakref.WeakKeyDictionary()


def _answers(transport: Any) -> _Answers:
    return _ANSWERS.setdefault(transport, _Answers())


async def send_request(transport: Any, request: Any) -> None:
    """Send ``request``; whatever was kept under its (8-bit, wrapping) sequence number is
    from an older request and no longer wanted."""
    answers = _answers(transport)
    answers.kept.pop(request.header.sequence, None)
    answers.abandoned.discard(request.header.sequence)
    await transport.send(request.BYTES)


def _parse(request: Any, frame: bytes) -> Any:
    """Like ``SMPClient.request``: the response, or the error the request names."""
    from pydantic import ValidationError

    for kind in (request._Response, request._ErrorV1, request._ErrorV2):
        try:
            return kind.loads(frame)
        except ValidationError:
            continue
    raise SMPUploadError(
        f"answer to {type(request).__name__} is not one of its answer types: {frame.hex()}"
    )


async def receive_answer(transport: Any, request: Any) -> Any:
    """The answer to ``request``, matched by sequence number. A frame with another sequence
    number is kept for its own request (an upload chunk still in flight), unless that
    request was given up on; smpclient would fail on either."""
    answers = _answers(transport)
    want = request.header.sequence
    if want in answers.kept:
        return _parse(request, answers.kept.pop(want))
    try:
        for _ in range(MAX_STALE_ANSWERS + 1):
            frame = await transport.receive()
            sequence = smpheader.Header.loads(frame[: smpheader.Header.SIZE]).sequence
            if sequence == want:
                return _parse(request, frame)
            if sequence in answers.abandoned:
                log.info("dropping a late SMP answer (sequence %d)", sequence)
                answers.abandoned.discard(sequence)
                continue
            log.info("keeping SMP answer %d for its request (waiting for %d)", sequence, want)
            answers.kept[sequence] = frame
            while len(answers.kept) > MAX_STALE_ANSWERS:
                del answers.kept[next(iter(answers.kept))]
    except asyncio.CancelledError:  # timed out: its answer, if it comes, is not wanted
        answers.abandoned.add(want)
        raise
    raise SMPBadSequence(f"no answer with sequence {want}")


async def exchange(client: SMPClient, request: Any, timeout_s: float) -> Any:
    """Send ``request`` and return its answer (or the error it names) within ``timeout_s``."""
    transport: Any = client._transport
    async with asyncio.timeout(timeout_s):
        await send_request(transport, request)
        return await receive_answer(transport, request)


def _chunk(client: SMPClient, image: bytes, offset: int) -> ImageUploadWrite:
    _cbor, size = client.get_max_cbor_and_data_size(ImageUploadWrite(off=offset, data=b""))
    return ImageUploadWrite(off=offset, data=image[offset : offset + max(1, size)])


async def windowed_upload(
    client: SMPClient, image: bytes, *, window: int = 2, timeout_s: float = 10.0
) -> AsyncGenerator[int, None]:
    """Upload ``image`` to image 0; yields the BMS's offset after each answer."""
    transport: Any = client._transport
    first = client._maximize_upload_packet(  # smpclient's own first chunk: len + sha
        ImageUploadWrite(
            off=0, data=b"", image=0, len=len(image), sha=hashlib.sha256(image).digest()
        ),
        image,
    )
    response = await exchange(client, first, timeout_s)
    if error(response) or response.off is None:
        raise SMPUploadError(response)
    offset = response.off
    yield offset
    in_flight: deque[tuple[ImageUploadWrite, int]] = deque()
    sent_to = offset
    while offset < len(image):
        while len(in_flight) < window and sent_to < len(image):
            chunk = _chunk(client, image, sent_to)
            await send_request(transport, chunk)
            sent_to += len(chunk.data)
            in_flight.append((chunk, sent_to))
        chunk, end = in_flight.popleft()
        response = await asyncio.wait_for(receive_answer(transport, chunk), timeout_s)
        if error(response):
            raise SMPUploadError(response)
        offset = int(response.off)
        yield offset
        if offset != end:
            # The BMS wants another offset: drop the answers to the chunks still in flight.
            for stale, _ in in_flight:
                await asyncio.wait_for(receive_answer(transport, stale), timeout_s)
            in_flight.clear()
            sent_to = offset
