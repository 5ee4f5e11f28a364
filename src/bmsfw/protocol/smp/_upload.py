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
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from smp import header as smpheader
from smpclient import SMPClient
from smpclient.exceptions import SMPBadSequence, SMPUploadError
from smpclient.generics import error
from smpclient.requests.image_management import ImageUploadWrite

__all__ = ["windowed_upload"]


def _parse(request: Any, frame: bytes) -> Any:
    """Like ``SMPClient.request``: the response, or the error the request names."""
    from pydantic import ValidationError

    header = smpheader.Header.loads(frame[: smpheader.Header.SIZE])
    if header.sequence != request.header.sequence:
        raise SMPBadSequence(f"sequence {header.sequence}, expected {request.header.sequence}")
    for kind in (request._Response, request._ErrorV1, request._ErrorV2):
        try:
            return kind.loads(frame)
        except ValidationError:
            continue
    raise SMPUploadError(f"answer to the upload chunk at {request.off} is no SMP upload answer")


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
    response = await client.request(first, timeout_s=timeout_s)
    if error(response) or response.off is None:
        raise SMPUploadError(response)
    offset = response.off
    yield offset
    in_flight: deque[tuple[ImageUploadWrite, int]] = deque()
    sent_to = offset
    while offset < len(image):
        while len(in_flight) < window and sent_to < len(image):
            chunk = _chunk(client, image, sent_to)
            await transport.send(chunk.BYTES)
            sent_to += len(chunk.data)
            in_flight.append((chunk, sent_to))
        chunk, end = in_flight.popleft()
        response = _parse(chunk, await asyncio.wait_for(transport.receive(), timeout_s))
        if error(response):
            raise SMPUploadError(response)
        offset = int(response.off)
        yield offset
        if offset != end:
            # The BMS wants another offset: drop the answers to the chunks still in flight.
            for stale, _ in in_flight:
                _parse(stale, await asyncio.wait_for(transport.receive(), timeout_s))
            in_flight.clear()
            sent_to = offset
