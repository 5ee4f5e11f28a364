"""The harness of the interop suite: everything a vendor and a bench provide.

The clients (uds_client.py, modbus_client.py) import nothing of bmsfw. This
harness makes what a BMS team would get from the vendor, through the `bmsfw`
command line run as a subprocess: the PKI (`bmsfw keys init`), the tester
certificate (`bmsfw keys issue-tester`), signed packages (`bmsfw package build` /
`sign`, from a plain binary and from imgtool-signed images), their release headers
(`bmsfw package header`), the provisioned virtual BMS (`bmsfw sim provision`) and
the running simulator (`bmsfw sim can` / `bmsfw sim rs485`). The only library
calls are the demo firmware binary (what a firmware build would produce) and a
free multicast group for the CAN bus.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.cli_support import SimProcess, run_bmsfw

from .uds_client import Credentials

TIME_SCALE = "20"
IMGTOOL = str(Path(sys.executable).with_name("imgtool"))
MODEL, REVISION = "BMS-16S", "C"


@dataclass(frozen=True)
class Package:
    path: Path
    header: bytes  # the release header (docs/uds.md), from the vendor's tools
    image: bytes  # the app component as the package stores it (raw)


@dataclass(frozen=True)
class Vendor:
    root: Path
    pki: Path
    tester: Credentials
    packages: dict[str, Package]
    template: Path  # a provisioned state directory running package "v1"


def _tester(pki: Path, root: Path) -> Credentials:
    """`bmsfw keys issue-tester`: the chain (tester, release CA, root) and the key, PEM."""
    chain, key = root / "tester-chain.pem", root / "tester.key"
    run_bmsfw(
        "keys", "issue-tester", "--pki", str(pki), "--cert-out", str(chain),
        "--key-out", str(key), check=0,
    )  # fmt: skip
    return Credentials(chain.read_bytes(), key.read_bytes())


def _header(package: Path) -> bytes:
    """`bmsfw package header`: what a third-party tool stages before the image."""
    out = package.with_suffix(".header")
    run_bmsfw("package", "header", str(package), "-o", str(out), check=0)
    return out.read_bytes()


def _app_image(package: Path) -> bytes:
    with zipfile.ZipFile(package) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        (app,) = [c for c in manifest["components"] if c["name"] == "app"]
        assert app.get("encoding", "raw") == "raw"
        return archive.read(app["member"] if "member" in app else f"components/{app['name']}.bin")


def _build(
    root: Path, pki: Path, name: str, *, version: str, counter: int, source: list[str]
) -> Package:
    unsigned, signed = root / f"{name}-unsigned.bmsfw", root / f"{name}.bmsfw"
    run_bmsfw(
        "package", "build", "--product", "demo-bms", "--version", version,
        "--security-counter", str(counter), "--hw-model", MODEL, "--hw-revision", REVISION,
        *source, "--pki", str(pki), "--encoding", "raw", "-o", str(unsigned), check=0,
    )  # fmt: skip
    run_bmsfw("package", "sign", str(unsigned), "--pki", str(pki), "-o", str(signed), check=0)
    return Package(signed, _header(signed), _app_image(signed))


@pytest.fixture(scope="session")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Vendor:
    from bmsfw.sim import make_app_payload  # a firmware build: the demo app binary

    root = tmp_path_factory.mktemp("vendor")
    pki = root / "pki"
    run_bmsfw("keys", "init", str(pki), check=0)
    sources: dict[str, tuple[str, int, list[str]]] = {}
    for name, version, counter, behaviour in (
        ("v1", "1.0.0", 1, None),
        ("v2", "1.1.0", 2, None),
        ("older", "0.9.0", 1, None),  # a downgrade at the running 1.0.0's counter
        ("selftest-fails", "1.1.0", 2, "fail-selftest"),
    ):
        binary = root / f"{name}.bin"
        binary.write_bytes(make_app_payload(version, size=12 * 1024, behaviour=behaviour))
        sources[name] = (version, counter, ["--app", str(binary)])
    # images signed by imgtool itself, wrapped as they are: its default stores only the
    # key's hash (the BMS's bootloader holds the public key), or the full public key
    plain = root / "plain.bin"
    plain.write_bytes(bytes(range(256)) * 40)
    for key_format in ("hash", "full"):
        signed = root / f"imgtool-{key_format}.bin"
        subprocess.run(
            [
                IMGTOOL, "sign", "--key", str(pki / "image-signing.key"), "--header-size",
                "0x200", "--pad-header", "--align", "8", "--version", "1.2.0", "--slot-size",
                "0x10000", "--security-counter", "2", "--public-key-format", key_format,
                str(plain), str(signed),
            ],
            check=True, capture_output=True,
        )  # fmt: skip
        sources[f"imgtool-{key_format}"] = ("1.2.0", 2, ["--image", f"app={signed}"])
    # the CLI runs are independent: build the packages side by side
    with ThreadPoolExecutor(4) as pool:
        futures = {
            name: pool.submit(_build, root, pki, name, version=v, counter=c, source=src)
            for name, (v, c, src) in sources.items()
        }
        tester = pool.submit(_tester, pki, root)
        packages = {name: future.result() for name, future in futures.items()}
    template = root / "template"
    run_bmsfw(
        "sim", "provision", "--state-dir", str(template), "--pki", str(pki),
        "--package", str(packages["v1"].path), check=0,
    )  # fmt: skip
    return Vendor(root, pki, tester.result(), packages, template)


class Simulator(SimProcess):
    """`bmsfw sim can|rs485` in its own process, on a copy of the vendor's template."""

    def __init__(self, vendor: Vendor, work: Path) -> None:
        super().__init__(vendor.template, work, time_scale=TIME_SCALE)


@pytest.fixture
def can_bench(vendor: Vendor, tmp_path: Path) -> Iterator[tuple[Simulator, str, int]]:
    """A virtual BMS (node 1) on its own udp_multicast bus: (simulator, group, port)."""
    from bmsfw.sim.lab import unique_multicast_link

    link = unique_multicast_link()
    group, port = link.split(":", 1)[1].split(",")[0], int(link.split("port=")[1])
    sim = Simulator(vendor, tmp_path)
    sim.start("can", "--bus", link)
    try:
        yield sim, group, port
    finally:
        sim.stop()


@pytest.fixture
def rs485_bench(vendor: Vendor, tmp_path: Path) -> Iterator[tuple[Simulator, str]]:
    """A virtual BMS (unit 1) on a simulated RS485 line: (simulator, pty path)."""
    sim = Simulator(vendor, tmp_path)
    info = sim.start("rs485")
    try:
        yield sim, str(info["port"])
    finally:
        sim.stop()


def sim_set(sim: Simulator, *args: str) -> None:
    """`bmsfw sim set` on the running simulator (what a bench operator types)."""
    run_bmsfw("sim", "set", "--state-dir", str(sim.state), "--node", "1", *args, check=0)


@dataclass(frozen=True)
class SmpBench:
    """A virtual MCUboot BMS serving SMP on a pty and on UDP port 1337 (stock device:
    no tester check), and the vendor's signed images as files for the stock tools."""

    serial_port: str
    udp: str  # HOST:1337 on a loopback address of its own
    images: dict[str, Path]


@pytest.fixture
def smp_bench(vendor: Vendor, tmp_path: Path) -> Iterator[SmpBench]:
    # the bench's SMP simulator (python -m bmsfw.sim.smp_server) in its own process
    import shutil

    from bmsfw.sim.smp_server import SimSmpProcess, loopback_udp_address

    state = tmp_path / "bms"
    shutil.copytree(vendor.template / "node1", state)
    images = {}
    for name in ("v1", "v2", "selftest-fails"):
        images[name] = tmp_path / f"{name}.signed.bin"
        images[name].write_bytes(vendor.packages[name].image)
    process = SimSmpProcess(
        state,
        serial=True,
        udp=loopback_udp_address(),
        time_scale=float(TIME_SCALE),
        log_file=tmp_path / "smp-device.log",
    )
    info = process.start()
    try:
        yield SmpBench(str(info["serial_port"]), str(info["udp"]), images)
    finally:
        process.stop()
