"""A simulated fleet: G gateway agents with M virtual BMS each, against a real fleet server.

Each gateway is a real :class:`~bmsfw.fleet.agent.Agent` with its own
credential, state directory and HTTP client (TLS verified against the CA when
one is given), polling in its own thread. Its BMS are real
:class:`~bmsfw.sim.VirtualBms` devices (flash, OTP, bootloader and
self-test, file-backed), reached **in process** through
:class:`SimBmsSession` (a :class:`~bmsfw.sim.direct.DirectSession`), not over
CAN or RS485: the simulated fleet exercises the server, the agent and the update
pipeline at scale, while the CAN/RS485 paths have their own end-to-end tests
(and ``bmsfw agent --can ...`` drives real links). Device time runs on one
:class:`~bmsfw.sim.SimClock` per gateway, so boots, self-tests and preflight
sampling windows cost no wall time.

Faults, each a share of the devices (or of the requests for ``drop``), picked
deterministically from ``seed``:

* ``fail_preflight_pct``: state of charge 15 % (below the 20 % floor): preflight
  refuses (E401) until the agent gives up;
* ``fail_selftest_pct``: a cell's ADC gain off by 2 %, so the post-update
  self-test (cell voltages within ±0.5 %) fails and the BMS rolls back;
* ``drop_pct``: the gateway's connection drops: a request fails before it is
  sent, or an artifact download is cut half-way (the agent resumes with Range);
* ``power_loss_pct``: the BMS loses power during one of its next flash
  operations; the provider powers it again at the next poll and the transfer
  resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bmsfw.errors import BmsfwError, PackageError
from bmsfw.fleet.agent import Agent, AgentConfig
from bmsfw.fleet.agent_errors import AgentConfigError
from bmsfw.fleet.client import ClientConfig, FleetClient
from bmsfw.package import TrustAnchors, key_hash, parse_image, verify_release
from bmsfw.package._image import TLV_KEYHASH
from bmsfw.protocol.device_errors import PowerCutError
from bmsfw.sim import DeviceSpec, FlashSpec, SimClock, VirtualBms, provision
from bmsfw.sim.direct import DirectSession
from bmsfw.sim.flash import BANK_A, BANK_B
from bmsfw.update.connect import Connection
from bmsfw.update.profile import UpdateProfile

__all__ = [
    "DropTransport",
    "SimBmsProvider",
    "SimBmsSession",
    "SimFleet",
    "SimFleetConfig",
    "SimGateway",
    "provision_sim_bms",
]

log = logging.getLogger(__name__)

KIB = 1024
_GATEWAYS_FILE = "gateways.json"


class SimBmsSession(DirectSession):
    """DirectSession plus the running image's SHA-256 (what a gateway reports for integrity)."""

    def read_firmware_sha256(self) -> str:
        status = self.bms.boot_status()
        if not status.active_bank:
            return ""
        info = self.bms.bank_info(status.active_bank)
        if not info.valid:
            return ""
        region = BANK_A if status.active_bank == "A" else BANK_B
        view = self.bms.flash.view(region)
        return hashlib.sha256(bytes(view[: info.image_size])).hexdigest()


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def provision_sim_bms(
    directory: Path,
    serials: list[str],
    initial_release: bytes,
    trust_root_pem: bytes,
    *,
    bank_size: int | None = None,
) -> list[Path]:
    """Provision one virtual BMS per serial under ``directory`` (existing ones are kept).

    The factory image is the app of ``initial_release``, verified against the trust
    root; OTP gets the root key hash and the image key named by the image's KEYHASH.
    """
    try:
        trust = TrustAnchors.from_root_certificate(trust_root_pem)
        release = verify_release(initial_release, trust)
    except PackageError as exc:
        raise AgentConfigError(f"the initial release for the simulated BMS: {exc}") from exc
    manifest = release.manifest
    image = release.images[manifest.components[0].name]
    tlv = parse_image(image).tlv(TLV_KEYHASH)
    if tlv is None:
        raise AgentConfigError("the initial image carries no KEYHASH TLV to fuse")
    from cryptography import x509

    root_public = x509.load_pem_x509_certificate(trust_root_pem).public_key()
    spec = DeviceSpec(
        model=manifest.hardware.model,
        hw_revision=manifest.hardware.revisions[0],
        flash=FlashSpec.small(
            bank_size=bank_size or max(64 * KIB, _round_up(4 * len(image), KIB)),
            sector_size=KIB,
        ),
        transfer_block_size=512,
    )
    paths = []
    for serial in serials:
        path = directory / serial
        if not (path / "device.json").is_file():
            provision(
                path,
                initial_image=image,
                root_key_hash=key_hash(root_public),  # type: ignore[arg-type]
                image_key_hash=tlv.value,
                spec=spec,
                serial=serial,
            )
        paths.append(path)
    return paths


class SimBmsProvider:
    """The gateway's local BMS: virtual devices that stay powered between polls.

    A device that lost power (``PowerCutError``) is powered again at the next
    :meth:`open`, as a real pack's BMS comes back when its supply does.
    """

    def __init__(self, paths: list[Path], clock: SimClock) -> None:
        self.paths = paths
        self.clock = clock
        self.devices: dict[Path, VirtualBms] = {}
        self.power_cycles = 0
        self._lock = threading.Lock()

    def bms(self, path: Path) -> VirtualBms:
        with self._lock:
            bms = self.devices.get(path)
            if bms is None or bms.dead:
                if bms is not None:
                    self.power_cycles += 1
                    log.info("%s: power is back", path.name)
                bms = VirtualBms(path, clock=self.clock)
                self.devices[path] = bms
            return bms

    def open(self) -> Connection:
        sessions: list[DirectSession] = []
        for path in self.paths:
            try:
                bms = self.bms(path)
                bms.wait_boot(timeout_s=60.0)
            except BmsfwError as exc:  # PowerCutError during boot: try next poll
                log.warning("%s: not running (%s)", path.name, exc)
                continue
            sessions.append(SimBmsSession(bms))
        return Connection(list(sessions), [])

    def close(self) -> None:
        with self._lock:
            for bms in self.devices.values():
                if not bms.dead:
                    bms.close()
            self.devices.clear()


class DropTransport(httpx.BaseTransport):
    """Drops ``drop_pct`` % of requests: before sending, or half-way through an artifact.

    Fault injection at the gateway's network edge; the bytes still come from the
    real server over a real socket.
    """

    def __init__(self, inner: httpx.BaseTransport, drop_pct: float, rng: random.Random) -> None:
        self.inner = inner
        self.drop_pct = drop_pct
        self.rng = rng
        self.dropped = 0
        self.cut_downloads = 0
        self.cut_next_downloads = 0  # deterministic: cut this many next artifact downloads
        # (Range header or "", HTTP status) of every artifact request, for inspection
        self.artifact_requests: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def _drop(self) -> bool:
        with self._lock:
            return self.drop_pct > 0 and self.rng.random() * 100 < self.drop_pct

    def _cut_now(self) -> bool:
        with self._lock:
            if self.cut_next_downloads > 0:
                self.cut_next_downloads -= 1
                return True
        return self._drop()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        is_artifact = request.method == "GET" and request.url.path.endswith("/artifact")
        if not is_artifact and self._drop():
            self.dropped += 1
            raise httpx.ConnectError("simulated connection drop", request=request)
        response = self.inner.handle_request(request)
        if is_artifact:
            self.artifact_requests.append((request.headers.get("range", ""), response.status_code))
            if response.status_code in (200, 206) and self._cut_now():
                self.cut_downloads += 1
                length = int(response.headers.get("content-length", "0"))
                response.stream = _CutStream(response.stream, max(1, length // 2), request)
        return response

    def close(self) -> None:
        self.inner.close()


class _CutStream(httpx.SyncByteStream):
    def __init__(self, inner: object, limit: int, request: httpx.Request) -> None:
        self.inner = inner
        self.limit = limit
        self.request = request

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:  # type: ignore[attr-defined]
            room = self.limit - sent
            if room <= 0:
                break
            piece = chunk[:room]
            sent += len(piece)
            yield piece
        raise httpx.ReadError("simulated connection drop mid-download", request=self.request)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class SimFleetConfig:
    server_url: str
    state_dir: Path
    trust_root_pem: bytes
    initial_release: bytes  # the firmware the factory flashed
    gateways: int = 10
    bms_per_gateway: int = 3
    fail_preflight_pct: float = 0.0
    fail_selftest_pct: float = 0.0
    drop_pct: float = 0.0
    power_loss_pct: float = 0.0
    seed: int = 0
    ca_file: Path | None = None
    allow_insecure_http: bool = False
    max_poll_interval_s: float | None = None
    bandwidth_floor_bps: int = 0
    max_preflight_attempts: int = 3
    name_prefix: str = "sim"
    tuf_root: bytes | None = None  # the server's TUF root.json: agents verify its metadata

    def validate(self) -> None:
        if self.gateways < 1 or self.bms_per_gateway < 1:
            raise AgentConfigError("--gateways and --bms-per-gateway must be at least 1")
        for name in ("fail_preflight_pct", "fail_selftest_pct", "drop_pct", "power_loss_pct"):
            value = getattr(self, name)
            if not 0 <= value <= 100:
                raise AgentConfigError(f"{name} must be within 0..100, not {value}")


@dataclass
class SimGateway:
    name: str
    site: str
    token: str
    agent: Agent
    provider: SimBmsProvider
    transport: DropTransport
    clock: SimClock
    serials: list[str]
    thread: threading.Thread | None = None
    errors: list[str] = field(default_factory=list)


class SimFleet:
    """Create (or reuse), start and stop the simulated gateways."""

    def __init__(self, config: SimFleetConfig) -> None:
        config.validate()
        self.config = config
        self.rng = random.Random(config.seed)
        self.gateways: list[SimGateway] = []
        self.faults: dict[str, set[str]] = {
            "fail_preflight": set(),
            "fail_selftest": set(),
            "power_loss": set(),
        }
        self._stop = threading.Event()

    # ---- set-up -----------------------------------------------------------

    def gateway_names(self) -> list[str]:
        return [f"{self.config.name_prefix}-gw{g:03d}" for g in range(self.config.gateways)]

    def register(self, admin: FleetClient) -> dict[str, str]:
        """Create the gateways on the server (admin token); tokens are kept in the state dir."""
        tokens_file = self.config.state_dir / _GATEWAYS_FILE
        tokens: dict[str, str] = {}
        if tokens_file.is_file():
            tokens = json.loads(tokens_file.read_text())
        for g, name in enumerate(self.gateway_names()):
            if name in tokens:
                continue
            site = f"{self.config.name_prefix}-site{g:03d}"
            result = admin.post("gateways", {"name": name, "site": site, "tags": ["sim"]})
            tokens[name] = str(result["token"])
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        tokens_file.write_text(json.dumps(tokens, indent=1))
        tokens_file.chmod(0o600)
        return tokens

    def build(self, tokens: dict[str, str]) -> None:
        """Provision the virtual BMS, pick the faulty ones, create an agent per gateway."""
        cfg = self.config
        profile = UpdateProfile()
        for g, name in enumerate(self.gateway_names()):
            if name not in tokens:
                raise AgentConfigError(f"no token for gateway {name}; register it first")
            serials = [f"{name.upper()}-BMS{b:02d}" for b in range(cfg.bms_per_gateway)]
            gw_dir = cfg.state_dir / name
            paths = provision_sim_bms(
                gw_dir / "bms", serials, cfg.initial_release, cfg.trust_root_pem
            )
            clock = SimClock()
            provider = SimBmsProvider(paths, clock)
            transport = DropTransport(
                self._transport(), cfg.drop_pct, random.Random(f"{cfg.seed}:{name}")
            )
            http = httpx.Client(base_url=cfg.server_url, transport=transport, timeout=30.0)
            client = FleetClient(
                ClientConfig(
                    cfg.server_url,
                    tokens[name],
                    ca_file=cfg.ca_file,
                    allow_insecure_http=cfg.allow_insecure_http,
                ),
                http=http,
            )
            agent = Agent(
                AgentConfig(
                    state_dir=gw_dir / "agent",
                    trust_root_pem=cfg.trust_root_pem,
                    profile=profile,
                    confirmed=frozenset(c.id for c in profile.confirmations),
                    max_poll_interval_s=cfg.max_poll_interval_s,
                    bandwidth_floor_bps=cfg.bandwidth_floor_bps,
                    max_preflight_attempts=cfg.max_preflight_attempts,
                    agent_version="sim",
                    tuf_root=cfg.tuf_root,
                ),
                client,
                provider,
                clock=clock,
            )
            site = f"{cfg.name_prefix}-site{g:03d}"
            self.gateways.append(
                SimGateway(name, site, tokens[name], agent, provider, transport, clock, serials)
            )
        self._pick_faults()

    def _transport(self) -> httpx.BaseTransport:
        if self.config.server_url.startswith("https://"):
            verify: ssl.SSLContext | bool = True
            if self.config.ca_file is not None:
                verify = ssl.create_default_context(cafile=str(self.config.ca_file))
            return httpx.HTTPTransport(verify=verify)
        if not self.config.allow_insecure_http:
            raise AgentConfigError(f"{self.config.server_url} is plain HTTP; use https://")
        return httpx.HTTPTransport()

    def _pick(self, pct: float) -> set[str]:
        serials = [s for gw in self.gateways for s in gw.serials]
        return set(self.rng.sample(serials, round(len(serials) * pct / 100)))

    def _pick_faults(self) -> None:
        cfg = self.config
        self.inject("fail_preflight", self._pick(cfg.fail_preflight_pct))
        self.inject("fail_selftest", self._pick(cfg.fail_selftest_pct))
        self.inject("power_loss", self._pick(cfg.power_loss_pct))

    def inject(self, kind: str, serials: set[str]) -> None:
        """Make ``serials`` faulty: "fail_preflight", "fail_selftest" or "power_loss"."""
        for serial in sorted(serials):
            bms = self.device(serial)
            if kind == "fail_preflight":
                bms.faults.set_soc(15.0)
            elif kind == "fail_selftest":
                bms.faults.adc_gain_error(0, 0.02)
            elif kind == "power_loss":
                # Somewhere in the staging write, the erase or the first blocks.
                bms.faults.power_cut_at(self.rng.randint(2, 10))
            else:
                raise AgentConfigError(f"unknown fault kind {kind!r}")
            self.faults[kind].add(serial)

    # ---- access -----------------------------------------------------------

    def serials(self) -> list[str]:
        return [s for gw in self.gateways for s in gw.serials]

    def gateway_of(self, serial: str) -> SimGateway:
        for gw in self.gateways:
            if serial in gw.serials:
                return gw
        raise KeyError(serial)

    def device(self, serial: str) -> VirtualBms:
        """The powered device (powered again if it was cut)."""
        gw = self.gateway_of(serial)
        return gw.provider.bms(gw.provider.paths[gw.serials.index(serial)])

    # ---- running ----------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        for gw in self.gateways:
            gw.thread = threading.Thread(
                target=self._run_gateway, args=(gw,), name=f"agent-{gw.name}", daemon=True
            )
            gw.thread.start()

    def _run_gateway(self, gw: SimGateway) -> None:
        try:
            gw.agent.run(self._stop)
        except PowerCutError as exc:  # only if a cut escapes every handler: keep the record
            gw.errors.append(str(exc))
        except Exception as exc:  # a crashed simulated gateway must be visible, not silent
            log.exception("gateway %s stopped", gw.name)
            gw.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        for gw in self.gateways:
            if gw.thread is not None:
                gw.thread.join(timeout_s)
                gw.thread = None

    def close(self) -> None:
        self.stop()
        for gw in self.gateways:
            gw.agent.client.close()
            gw.provider.close()

    def __enter__(self) -> SimFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
