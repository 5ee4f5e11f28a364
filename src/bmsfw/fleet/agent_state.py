"""The agent's memory across restarts: one JSON file, replaced atomically.

What has to survive a crash or power cut of the gateway in the middle of a
campaign: which device is in which state of which campaign (so the agent can
re-read the BMS and report what is true), how often each step was tried, the
reports and backups the server has not acknowledged yet (the outbox), and which
downloaded artifacts were verified. The file is written to a temporary file in
the same directory, fsynced and moved over the old one with ``os.replace``
(python-tuf's pattern): a reader sees the old or the new state, never half.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bmsfw.fleet.agent_errors import AgentStateCorruptError

__all__ = ["STATE_FILE", "AgentState", "Job", "is_sha256"]

log = logging.getLogger(__name__)

STATE_FILE = "agent-state.json"
_FORMAT = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_sha256(value: str) -> bool:
    """64 lowercase hex digits: the only digests the agent turns into file names."""
    return _SHA256.fullmatch(value) is not None


@dataclass
class Job:
    """One device in one campaign, as this agent last left it."""

    campaign_id: int
    serial: str
    release_id: int
    version: str
    release_sha256: str
    state: str = "offered"  # the last state reported (or queued) to the server
    from_version: str = ""
    error_code: str = ""
    detail: str = ""
    install_attempts: int = 0
    preflight_attempts: int = 0
    download_failures: int = 0

    @property
    def key(self) -> str:
        return job_key(self.campaign_id, self.serial)


def job_key(campaign_id: int, serial: str) -> str:
    return f"{campaign_id}:{serial}"


@dataclass
class AgentState:
    path: Path
    jobs: dict[str, Job] = field(default_factory=dict)
    # Messages the server has not acknowledged, in order: {"kind": "report"|"backup", "body":
    # ...}, or {"kind": "evidence", "file": NAME, "campaign_id": N} (a bundle in evidence/)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    # sha256 -> file name in the artifacts directory, once the signature was verified
    verified_artifacts: dict[str, str] = field(default_factory=dict)
    # Answers of the server refused since the last good check-in: {"code", "detail", "count"}
    problems: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, state_dir: Path) -> AgentState:
        path = state_dir / STATE_FILE
        state = cls(path)
        if not path.exists():
            return state
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("format") != _FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {_FORMAT}")
            state.jobs = {k: Job(**v) for k, v in raw["jobs"].items()}
            state.outbox = list(raw["outbox"])
            state.verified_artifacts = {
                sha: name
                for sha, name in dict(raw["verified_artifacts"]).items()
                if is_sha256(sha) and name == f"{sha}.bmsfw"
            }
            state.problems = list(raw.get("problems", []))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AgentStateCorruptError(f"{path}: {exc}") from exc
        return state

    def save(self) -> None:
        data = {
            "format": _FORMAT,
            "jobs": {k: asdict(v) for k, v in sorted(self.jobs.items())},
            "outbox": self.outbox,
            "verified_artifacts": self.verified_artifacts,
            "problems": self.problems,
        }
        text = json.dumps(data, indent=1, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".agent-state-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def job(self, campaign_id: int, serial: str) -> Job | None:
        return self.jobs.get(job_key(campaign_id, serial))
