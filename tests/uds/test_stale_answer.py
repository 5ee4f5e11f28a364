"""A late answer to an earlier request is not taken for the answer to the current one:
a read of another DID is read again, an answer to another service is dropped while
the current request waits (the connection the udsoncan client reads)."""

from __future__ import annotations

import queue
import struct
import time

import pytest
from udsoncan.exceptions import TimeoutException

from bmsfw.protocol.errors import UdsInvalidResponseError
from bmsfw.protocol.uds.client import UdsClientConfig, UdsSession, _AnswersToTheRequest


class _Answers:
    """Stands in for ``UdsSession.request`` only: returns queued answers, records requests."""

    def __init__(self, *answers: bytes) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []

    def __call__(self, sid: int, data: bytes = b"", **_: object) -> bytes:
        self.requests.append(bytes([sid]) + data)
        return self.answers.pop(0)


def _session(answers: _Answers, retries: int = 2) -> UdsSession:
    session = UdsSession.__new__(UdsSession)
    session.config = UdsClientConfig(request_retries=retries)
    session.request = answers  # type: ignore[method-assign]
    return session


def test_a_stale_answer_naming_another_did_is_read_again() -> None:
    answers = _Answers(struct.pack(">H", 0xF190) + b"old", struct.pack(">H", 0x0116) + b"ok")
    assert _session(answers).read_did(0x0116) == b"ok"
    assert answers.requests == [b"\x22\x01\x16", b"\x22\x01\x16"]


def test_a_bms_that_always_names_another_did_is_refused_after_the_retries() -> None:
    answers = _Answers(*(struct.pack(">H", 0xF190) + b"x" for _ in range(3)))
    with pytest.raises(UdsInvalidResponseError, match="DID 0x0116: response names another DID"):
        _session(answers, retries=2).read_did(0x0116)
    assert len(answers.requests) == 3


def test_a_truncated_answer_is_refused() -> None:
    answers = _Answers(b"\x01", b"\x01")
    with pytest.raises(UdsInvalidResponseError, match="response names another DID"):
        _session(answers, retries=1).read_did(0x0116)
    assert len(answers.requests) == 2


class _Wire:
    """The answers the BMS puts on the bus, in order (a unit test's stand-in)."""

    def __init__(self, *answers: bytes) -> None:
        self.sent: list[bytes] = []
        self.answers: queue.Queue[bytes] = queue.Queue()
        for answer in answers:
            self.answers.put(answer)

    def send(self, payload: bytes) -> None:
        self.sent.append(payload)

    def wait_frame(self, timeout: float | None = None, exception: bool = False) -> bytes | None:
        try:
            return self.answers.get(timeout=timeout)
        except queue.Empty:
            if exception:
                raise TimeoutException("no frame") from None
            return None


def test_an_answer_to_another_service_is_dropped_and_the_right_one_taken() -> None:
    late_read = bytes([0x62, 0xF1, 0x95]) + b"1.0.0"
    wire = _Wire(late_read, bytes([0x7F, 0x10, 0x78]), bytes([0x50, 0x02, 0, 0x32, 0, 0xC8]))
    conn = _AnswersToTheRequest(wire)
    conn.send(bytes([0x10, 0x02]))
    assert conn.wait_frame(timeout=1, exception=True) == bytes([0x7F, 0x10, 0x78])
    assert conn.wait_frame(timeout=1, exception=True) == bytes([0x50, 0x02, 0, 0x32, 0, 0xC8])
    assert wire.sent == [bytes([0x10, 0x02])]


def test_an_answer_to_the_same_service_is_left_to_the_client() -> None:
    other_did = bytes([0x62, 0xF1, 0x90]) + b"SN"  # a late read of another DID
    conn = _AnswersToTheRequest(_Wire(other_did))
    conn.send(bytes([0x22, 0xF1, 0x95]))
    assert conn.wait_frame(timeout=1, exception=True) == other_did


def test_only_late_answers_time_out_within_the_same_limit() -> None:
    conn = _AnswersToTheRequest(_Wire(bytes([0x62, 0xF1, 0x95]), bytes([0x76, 0x01])))
    conn.send(bytes([0x31, 0x01, 0xFF, 0x01]))
    start = time.monotonic()
    with pytest.raises(TimeoutException):
        conn.wait_frame(timeout=0.2, exception=True)
    assert time.monotonic() - start < 1.0
    conn.send(bytes([0x31, 0x01, 0xFF, 0x01]))
    assert conn.wait_frame(timeout=0.05) is None
