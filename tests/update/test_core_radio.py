"""The decision core on radio links (SMP over Bluetooth LE), table-driven.

A radio link is an over-the-air channel; the field guide's 5 Mbit/s OTA floor is far
above what Bluetooth carries, so a BLE update passes only when the product profile
declares Bluetooth its service link (or by an operator override, which the preflight
records); the link's MTU, interval and RSSI are judged against the profile.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bmsfw.protocol.session import BleLinkFacts
from bmsfw.update.core import (
    OTA_MIN_BANDWIDTH_BPS,
    channel_for_link,
    estimate_ble_throughput_bps,
    judge_ble_link,
    judge_ota_bandwidth,
)
from bmsfw.update.errors import ProfileInvalidError
from bmsfw.update.profile import PreflightLimits, load_profile

GOOD = BleLinkFacts(
    att_mtu=247,
    interval_ms=7.5,
    rssi_dbm=None,
    encrypted=True,
    secure_connections=True,
    mitm=True,
)
LIMITS = PreflightLimits()


@pytest.mark.req("SEED-OTA-NOT-SAFETY-CRITICAL")
@pytest.mark.parametrize(
    ("wireless", "requested", "channel"),
    [
        (False, "wired", "wired"),
        (False, "ota", "ota"),
        (True, "wired", "ota"),
        (True, "ota", "ota"),
    ],
)
def test_a_radio_link_is_over_the_air(wireless: bool, requested: str, channel: str) -> None:
    assert channel_for_link(wireless, requested) == channel  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mtu", "interval_ms", "packets", "bps"),
    [
        (247, 7.5, 4, 4 * 244 * 8 / 0.0075),  # ~1.04 Mbit/s: a good phone or dongle
        (23, 50.0, 1, 20 * 8 / 0.05),  # 3.2 kbit/s: BLE's minimum MTU, one packet
        (247, 0.0, 4, 0.0),  # no interval known: nothing assumed
        (3, 7.5, 4, 0.0),
        (296, 7.5, 16, 2_000_000.0),  # 5 Mbit/s by arithmetic: the 2M PHY caps it
    ],
)
def test_throughput_estimate(mtu: int, interval_ms: float, packets: int, bps: float) -> None:
    assert estimate_ble_throughput_bps(mtu, interval_ms, packets) == pytest.approx(bps)


@given(
    mtu=st.integers(23, 517),
    interval_ms=st.floats(7.5, 4000.0),
    packets=st.integers(1, 16),
)
def test_ble_never_reaches_the_ota_floor(mtu: int, interval_ms: float, packets: int) -> None:
    """Whatever the connection parameters, BLE stays below 5 Mbit/s: the rule always bites."""
    facts = replace(GOOD, att_mtu=mtu, interval_ms=interval_ms)
    judged = judge_ble_link(facts, replace(LIMITS, ble_packets_per_event=packets))
    assert judged.expected_bps < OTA_MIN_BANDWIDTH_BPS
    assert not judge_ota_bandwidth(judged.expected_bps, LIMITS).passed


@pytest.mark.req("SEED-OTA-BANDWIDTH")
@pytest.mark.parametrize(
    ("expected_bps", "service_link", "passed", "why"),
    [
        (1.04e6, False, False, "below the 5 Mbit/s"),
        (1.04e6, True, True, "service link"),
        (5e6, False, False, "below the 5 Mbit/s"),  # the guide says *more than* 5 Mbit/s
        (6e6, False, True, "above the OTA floor"),
    ],
)
def test_ota_bandwidth_rule(
    expected_bps: float, service_link: bool, passed: bool, why: str
) -> None:
    judged = judge_ota_bandwidth(expected_bps, replace(LIMITS, ble_service_link=service_link))
    assert judged.passed is passed and why in judged.reason


@pytest.mark.parametrize(
    ("change", "limits", "problem"),
    [
        ({}, {}, ""),
        ({"att_mtu": 23}, {}, "ATT MTU 23 below 65"),
        ({"interval_ms": 100.0}, {}, "connection interval 100 ms above 50 ms"),
        ({"rssi_dbm": -92}, {}, "RSSI -92 dBm below -85 dBm"),
        ({"rssi_dbm": -60}, {}, ""),
        ({}, {"ble_att_mtu_min": 498}, "ATT MTU 247 below 498"),
    ],
)
def test_ble_link_limits(
    change: dict[str, object], limits: dict[str, object], problem: str
) -> None:
    judged = judge_ble_link(replace(GOOD, **change), replace(LIMITS, **limits))  # type: ignore[arg-type]
    assert judged.passed is (not problem)
    assert (problem in judged.problems) if problem else judged.problems == ()


def test_profile_declares_the_product_expected_rate() -> None:
    judged = judge_ble_link(GOOD, replace(LIMITS, ble_expected_throughput_bps=250_000.0))
    assert judged.expected_bps == 250_000.0 and "0.25 Mbit/s (profile)" in judged.measured


def test_profile_may_raise_the_ota_floor_never_lower_it(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[preflight]\nble_service_link = true\nota_min_bandwidth_bps = 8e6\n")
    profile = load_profile(path)
    assert profile.preflight.ble_service_link and profile.preflight.ota_min_bandwidth_bps == 8e6
    path.write_text("[preflight]\nota_min_bandwidth_bps = 1e6\n")
    with pytest.raises(ProfileInvalidError, match="may raise it, not lower it"):
        load_profile(path)
    path.write_text('[preflight]\nble_service_link = "yes"\n')
    with pytest.raises(ProfileInvalidError, match="true or false"):
        load_profile(path)
