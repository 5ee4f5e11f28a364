"""Run the fleet server under uvicorn (``bmsfw fleet serve``).

The parent process migrates the database once, then uvicorn starts
``workers`` processes, each building its app from the same settings (passed in
the environment, as uvicorn workers import the app by name). The processes
share nothing but the database (release files included), so more can run on
other hosts behind a load balancer.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from bmsfw.fleet.app import ServerConfig, create_app
from bmsfw.fleet.artifacts import ArtifactStore
from bmsfw.fleet.db import make_engine, upgrade_database
from bmsfw.fleet.edge import ACCESS_LOG
from bmsfw.fleet.errors import FleetConfigError
from bmsfw.fleet.releases import TrustRoot
from bmsfw.fleet.tuf_repo import TufRepository, TufSettings

__all__ = ["ServeOptions", "app_from_env", "configure_access_log", "serve"]

log = logging.getLogger(__name__)
_ENV = "BMSFW_FLEET_SERVER_SETTINGS"


@dataclass(frozen=True)
class ServeOptions:
    db_url: str
    trust_root: Path
    # An older server's --artifacts directory: its files are copied into the database
    # at start (release files live in the database since schema revision 0004).
    artifacts_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8443
    workers: int = 1
    tls_cert: Path | None = None
    tls_key: Path | None = None
    poll_interval_s: int = 60
    tick_interval_s: float = 15.0
    telemetry_interval_s: int = 600
    telemetry_keep_s: int = 3 * 86_400
    log_level: str = "warning"
    # TUF metadata for the agents: the root history made offline and the online key.
    tuf_root_dir: Path | None = None
    tuf_online_key: Path | None = None
    # The access log (one JSON line per request): a file, "-" for stderr, "" for none.
    access_log: str = "-"
    # GET /metrics: "token" (viewer token or above), "open" (anyone), "off".
    metrics: str = "token"
    # Rate limits shared by every process (docs/fleet.md, "Limits"); 0 switches one off.
    check_ins_per_s: float = 5.0
    check_in_burst: float = 30.0
    auth_failures_per_min: float = 30.0
    # Four eyes (docs/fleet.md, "Four eyes"): campaigns above this many devices (None:
    # none), and with four_eyes every other safety-relevant action, wait for a second
    # person; a request expires after approval_ttl_s.
    approval_above_devices: int | None = None
    four_eyes: bool = False
    approval_ttl_s: float = 24 * 3600.0

    def validate(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise FleetConfigError("--tls-cert and --tls-key go together")
        for path in (self.trust_root, self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise FleetConfigError(f"file not found: {path}")
        if self.workers < 1:
            raise FleetConfigError("--workers must be at least 1")
        if min(self.check_ins_per_s, self.auth_failures_per_min) < 0 or self.check_in_burst < 1:
            raise FleetConfigError(
                "--check-ins-per-s and --auth-failures-per-min must be 0 (off) or more, "
                "--check-in-burst at least 1"
            )
        if (self.approval_above_devices or 0) < 0 or self.approval_ttl_s <= 0:
            raise FleetConfigError(
                "--approval-above-devices must be 0 or more, --approval-ttl-h more than 0"
            )
        if (self.tuf_root_dir is None) != (self.tuf_online_key is None):
            raise FleetConfigError("--tuf-root-dir and --tuf-online-key go together")

    def tuf(self) -> TufSettings | None:
        return _tuf_settings(str(self.tuf_root_dir or ""), str(self.tuf_online_key or ""))


def _tuf_settings(root_dir: str, online_key: str) -> TufSettings | None:
    if not root_dir or not online_key:
        return None
    return TufSettings.load(Path(root_dir), Path(online_key))


def _settings_json(options: ServeOptions) -> str:
    return json.dumps(
        {
            "db_url": options.db_url,
            "trust_root": str(options.trust_root),
            "poll_interval_s": options.poll_interval_s,
            "tick_interval_s": options.tick_interval_s,
            "telemetry_interval_s": options.telemetry_interval_s,
            "telemetry_keep_s": options.telemetry_keep_s,
            "tuf_root_dir": str(options.tuf_root_dir or ""),
            "tuf_online_key": str(options.tuf_online_key or ""),
            "access_log": options.access_log,
            "metrics": options.metrics,
            "check_ins_per_s": options.check_ins_per_s,
            "check_in_burst": options.check_in_burst,
            "auth_failures_per_min": options.auth_failures_per_min,
            "approval_above_devices": options.approval_above_devices,
            "four_eyes": options.four_eyes,
            "approval_ttl_s": options.approval_ttl_s,
        }
    )


def app_from_env() -> FastAPI:
    """uvicorn factory: build the app from the settings the parent put in the environment."""
    raw = os.environ.get(_ENV)
    if not raw:
        raise FleetConfigError(f"{_ENV} is not set; start the server with `bmsfw fleet serve`")
    settings = json.loads(raw)
    configure_access_log(settings.get("access_log", "-"))
    trust_pem = Path(settings["trust_root"]).read_bytes()
    config = ServerConfig(
        db_url=settings["db_url"],
        trust_root_pem=trust_pem,
        poll_interval_s=int(settings["poll_interval_s"]),
        tick_interval_s=float(settings["tick_interval_s"]),
        telemetry_interval_s=int(settings.get("telemetry_interval_s", 600)),
        telemetry_keep_s=int(settings.get("telemetry_keep_s", 3 * 86_400)),
        migrate=False,  # the parent did it
        tuf=_tuf_settings(settings["tuf_root_dir"], settings["tuf_online_key"]),
        metrics=settings.get("metrics", "token"),
        check_ins_per_s=float(settings["check_ins_per_s"]),
        check_in_burst=float(settings["check_in_burst"]),
        auth_failures_per_min=float(settings["auth_failures_per_min"]),
        approval_above_devices=settings.get("approval_above_devices"),
        four_eyes=bool(settings.get("four_eyes", False)),
        approval_ttl_s=float(settings.get("approval_ttl_s", 24 * 3600.0)),
    )
    return create_app(config, trust=TrustRoot(trust_pem))


def configure_access_log(target: str) -> None:
    """Send the access log (logger ``bmsfw.fleet.access``) to ``target``: a file
    (appended), ``-`` for stderr, ``""`` for nowhere."""
    logger = ACCESS_LOG
    logger.propagate = False
    for old in list(logger.handlers):
        logger.removeHandler(old)
    if not target:
        logger.setLevel(logging.WARNING)  # the INFO lines are not even formatted
        return
    handler: logging.Handler = (
        logging.StreamHandler() if target == "-" else logging.FileHandler(target)
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def serve(options: ServeOptions) -> None:
    import uvicorn

    options.validate()
    TrustRoot(options.trust_root.read_bytes())  # fail here, not in every worker
    tuf = options.tuf()
    if tuf is not None:
        TufRepository(tuf)  # the online key must be the root's: fail here too
    engine = make_engine(options.db_url)
    try:
        upgrade_database(engine)
        if options.artifacts_dir is not None and options.artifacts_dir.is_dir():
            imported = ArtifactStore(engine).import_directory(options.artifacts_dir)
            if imported:
                log.warning("imported %d release file(s) from %s", imported, options.artifacts_dir)
    finally:
        engine.dispose()
    os.environ[_ENV] = _settings_json(options)
    scheme = "https" if options.tls_cert else "http"
    log.warning(
        "fleet server on %s://%s:%d (%d worker(s))",
        scheme,
        options.host,
        options.port,
        options.workers,
    )
    uvicorn.run(
        "bmsfw.fleet.server:app_from_env",
        factory=True,
        host=options.host,
        port=options.port,
        workers=options.workers,
        ssl_certfile=str(options.tls_cert) if options.tls_cert else None,
        ssl_keyfile=str(options.tls_key) if options.tls_key else None,
        log_level=options.log_level,
        access_log=False,
    )
