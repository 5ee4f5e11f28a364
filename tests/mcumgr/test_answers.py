"""SMP answers are matched to their request by sequence number (unit test of one function).

While upload chunks are in flight the pipeline asks other things (the telemetry watch
during the transfer); an answer to a chunk that arrives first must wait for the upload.
It used to be thrown away as "late", and the upload then waited 10 s for it (E395),
more often the busier the machine.
"""

from __future__ import annotations

import asyncio

import pytest
from smp.os_management import EchoWriteResponse
from smpclient.requests.os_management import EchoWrite

from bmsfw.protocol.smp._upload import receive_answer, send_request


class ScriptedTransport:
    """Gives the frames it was handed, in order (the device's answers on the air)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()

    async def send(self, data: bytes) -> None:
        self.sent.append(data)

    async def receive(self) -> bytes:
        return await self.frames.get()


def answer(request: EchoWrite) -> bytes:
    return bytes(EchoWriteResponse(sequence=request.header.sequence, r=request.d).BYTES)


def test_an_answer_for_a_request_still_in_flight_waits_for_it() -> None:
    async def run() -> None:
        transport = ScriptedTransport()
        chunk, watch = EchoWrite(d="chunk"), EchoWrite(d="telemetry")
        await send_request(transport, chunk)
        await send_request(transport, watch)
        transport.frames.put_nowait(answer(chunk))  # the chunk's answer comes first
        transport.frames.put_nowait(answer(watch))
        assert (await receive_answer(transport, watch)).r == "telemetry"
        got = await asyncio.wait_for(receive_answer(transport, chunk), 1.0)
        assert got.r == "chunk"

    asyncio.run(run())


def test_a_late_answer_to_a_request_given_up_on_is_dropped() -> None:
    async def run() -> None:
        transport = ScriptedTransport()
        lost, next_one = EchoWrite(d="lost"), EchoWrite(d="next")
        await send_request(transport, lost)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(receive_answer(transport, lost), 0.05)
        await send_request(transport, next_one)
        transport.frames.put_nowait(answer(lost))  # arrives after its time-out
        transport.frames.put_nowait(answer(next_one))
        assert (await receive_answer(transport, next_one)).r == "next"

    asyncio.run(run())
