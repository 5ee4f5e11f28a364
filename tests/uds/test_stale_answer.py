"""A late answer to an earlier read is not taken for the answer to the current one."""

from __future__ import annotations

import struct

import pytest

from bmsfw.protocol.errors import UdsInvalidResponseError
from bmsfw.protocol.uds.client import UdsClientConfig, UdsSession


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
