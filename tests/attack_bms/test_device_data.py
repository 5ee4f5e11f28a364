"""Tracebacks and implausible values from device data: every answer is decoded bounded."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .conftest import Attack
from .hostile_can import Behaviour

NAN_CONFIG = b'{"schema_version":1,"config":{"cell_ov_mv":NaN},"calibration":{},"checksum":""}'
INF_CONFIG = b'{"schema_version":1,"config":{},"calibration":{"gain":Infinity},"checksum":""}'
DEEP_CONFIG = b'{"schema_version":1,"config":' + b"[" * 3000 + b"]" * 3000 + b"}"


@pytest.mark.req("IEC62443-CR3.5")
@pytest.mark.parametrize(
    "document",
    [NAN_CONFIG, INF_CONFIG, DEEP_CONFIG, b"\xff\xfe", b"[]", b'{"schema_version":"x"}'],
    ids=["nan", "infinity", "deep", "not-utf8", "not-object", "bad-schema"],
)
def test_hostile_configuration_document(attack: Callable[..., Attack], document: bytes) -> None:
    """A configuration DID that is not the documented JSON: E363 at backup, nothing written."""
    result = attack(Behaviour(config_json=document))
    assert result.code == "BMSFW-E363", result.report.error
    assert result.report.failed_step == "backup"
    assert result.report.outcome == "refused"
    assert result.bms.writes == []
    assert result.seconds < 10


@pytest.mark.req("IEC62443-CR3.5")
@pytest.mark.parametrize(
    ("behaviour", "field"),
    [
        (Behaviour(soc_raw=25_000), "state of charge"),
        (Behaviour(temps_raw=(250, -3000)), "temperature sensor 2"),
        (Behaviour(cells_raw=(0xFFFF,) * 16), "cell 1 voltage"),
    ],
    ids=["soc-250", "minus-300-degC", "cells-6.55V"],
)
def test_impossible_telemetry_is_refused(
    attack: Callable[..., Attack], behaviour: Behaviour, field: str
) -> None:
    """SOC 250 %, -300 degC, every cell at 6.55 V (spread 0): E365 in preflight, not passed."""
    result = attack(behaviour)
    assert result.code == "BMSFW-E365", result.report.error
    assert field in result.report.error.message
    assert result.report.failed_step == "preflight"
    assert result.report.outcome == "refused"
    assert result.bms.writes == []


@pytest.mark.req("IEC62443-CR3.5")
def test_short_security_counter_is_an_invalid_answer(attack: Callable[..., Attack]) -> None:
    result = attack(Behaviour(did_override={0x0100: b"\x01"}))
    assert result.code == "BMSFW-E363", result.report.error
    assert result.report.failed_step == "identify"
    assert result.bms.writes == []
