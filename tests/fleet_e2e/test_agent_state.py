"""The agent's state file: atomic replacement, exact round trip, a clear error when corrupt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bmsfw.fleet.agent_errors import AgentStateCorruptError
from bmsfw.fleet.agent_state import STATE_FILE, AgentState, Job


def _state(tmp_path: Path) -> AgentState:
    state = AgentState.load(tmp_path)
    job = Job(campaign_id=4, serial="BMS-1", release_id=2, version="2.0.0", release_sha256="ab")
    job.state, job.install_attempts = "installing", 2
    state.jobs[job.key] = job
    state.outbox.append({"kind": "report", "body": {"device_serial": "BMS-1"}})
    state.verified_artifacts["ab" * 32] = "ab" * 32 + ".bmsfw"
    state.save()
    return state


def test_round_trip_and_no_temp_files_left(tmp_path: Path) -> None:
    saved = _state(tmp_path)
    loaded = AgentState.load(tmp_path)
    assert loaded.jobs == saved.jobs
    assert loaded.job(4, "BMS-1").install_attempts == 2  # type: ignore[union-attr]
    assert loaded.outbox == saved.outbox
    assert loaded.verified_artifacts == {"ab" * 32: "ab" * 32 + ".bmsfw"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]


def test_a_failed_write_keeps_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _state(tmp_path)
    before = (tmp_path / STATE_FILE).read_bytes()
    state.jobs["4:BMS-1"].state = "succeeded"

    def crash(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        state.save()
    assert (tmp_path / STATE_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]


@pytest.mark.parametrize(
    "content", [b"{not json", b'{"format": 99}', b'{"format": 1, "jobs": {"x": {"bad": 1}}}']
)
def test_corrupt_state_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(AgentStateCorruptError) as err:
        AgentState.load(tmp_path)
    assert err.value.code == "BMSFW-E673" and STATE_FILE in err.value.message
