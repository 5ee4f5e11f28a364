"""What a BMS team brings, made with the `bmsfw` command line and imgtool as they would.

One vendor per session: a PKI (`bmsfw keys init`), a tester certificate
(`bmsfw keys issue-tester`), the factory release every fresh BMS runs, and one
release per firmware input (a plain .bin, Intel HEX, ELF, and images signed by
imgtool with its default key hash and with the full key), each built with
`bmsfw package build` and signed with `bmsfw package sign`. The firmware files
are real GNU Arm toolchain output (data/build.sh).

Releases the BMS would refuse after a transfer are made too: one a careless
build makes (another hardware model), and two that `package build` no longer
lets anyone make (an app image without a security counter, one with a counter
that differs from the manifest's), assembled here like a hostile or buggy
builder would: a correctly signed manifest around such an image.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from tests.cli_support import SimProcess, run_bmsfw

DATA = Path(__file__).resolve().parent / "data"
IMGTOOL = str(Path(sys.executable).with_name("imgtool"))
MODEL, REVISION = "BMS-16S", "C"
TIME_SCALE = "20"

# name -> (release version, the header version the BMS will report)
UPDATES = {
    "bin": ("1.1.0", "1.1.0+0"),
    "hex": ("1.2.0", "1.2.0+0"),
    "elf": ("1.3.0+17", "1.3.0+17"),
    "imgtool-keyhash": ("1.4.0-rc1", "1.4.0+3900000001"),
    "imgtool-fullkey": ("1.5.0", "1.5.0+0"),
}
# name -> the code bmsfw refuses it with, before the transfer
REFUSALS = {
    "no-security-counter": "BMSFW-E132",
    "other-security-counter": "BMSFW-E133",
    "other-hardware": "BMSFW-E110",
}
# name -> the release its remedy leads to (docs/troubleshooting.md), installed on the same BMS
REMEDIES = {
    "no-security-counter": "counter-7",  # imgtool sign --security-counter 7
    "other-security-counter": "counter-7",
    "other-hardware": "bin",  # the release built for this model
}
NODES = {name: n for n, name in enumerate([*UPDATES, *REFUSALS], start=1)}  # 8: CAN's limit


@dataclass(frozen=True)
class Vendor:
    root: Path
    pki: Path
    tester_chain: Path
    tester_key: Path
    packages: dict[str, Path]
    template: Path  # provisioned state: NODES fresh BMS running the factory release
    profile: Path  # the default product profile with a short supply sampling window


def imgtool_sign(key: Path, src: Path, dst: Path, *extra: str) -> None:
    subprocess.run(
        [IMGTOOL, "sign", "-k", str(key), "--header-size", "0x200", "--pad-header",
         "--align", "8", "--slot-size", "0x20000", *extra, str(src), str(dst)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def build(root: Path, pki: Path, name: str, version: str, counter: int, *source: str,
          model: str = MODEL) -> Path:  # fmt: skip
    unsigned, signed = root / f"{name}-unsigned.bmsfw", root / f"{name}.bmsfw"
    run_bmsfw(
        "package", "build", "--product", "demo-bms", "--version", version,
        "--security-counter", str(counter), "--hw-model", model, "--hw-revision", REVISION,
        *source, "--pki", str(pki), "--encoding", "raw", "-o", str(unsigned), check=0,
    )  # fmt: skip
    run_bmsfw("package", "sign", str(unsigned), "--pki", str(pki), "-o", str(signed), check=0)
    return signed


def forge_app(package: Path, image: bytes, pki: Path, out: Path) -> Path:
    """``package`` with its app image replaced and the manifest signed again by the vendor."""
    from bmsfw.package import Manifest, load_signer, sign_release
    from bmsfw.package._release import _write_zip

    with zipfile.ZipFile(package) as archive:
        manifest = Manifest.from_json_bytes(archive.read("manifest.json"))
    app = manifest.component("app")
    digest = hashlib.sha256(image).digest()
    new_app = replace(app, image_size=len(image), image_sha256=digest, stored_size=len(image),
                      stored_sha256=digest)  # fmt: skip
    comps = tuple(new_app if c.name == "app" else c for c in manifest.components)
    forged = replace(manifest, components=comps)
    unsigned = _write_zip([("manifest.json", forged.to_json_bytes()), (app.member, image)])
    out.write_bytes(sign_release(unsigned, load_signer(pki, "release-signer")))
    return out


@pytest.fixture(scope="session")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Vendor:
    from bmsfw.sim import make_app_payload  # the factory firmware: the demo app

    root = tmp_path_factory.mktemp("firmware-inputs")
    pki = root / "pki"
    run_bmsfw("keys", "init", str(pki), check=0)
    chain, key = root / "tester-chain.pem", root / "tester.key"
    run_bmsfw("keys", "issue-tester", "--pki", str(pki), "--cert-out", str(chain),
              "--key-out", str(key), check=0)  # fmt: skip
    factory = root / "factory.bin"
    factory.write_bytes(make_app_payload("1.0.0", size=8 * 1024))
    packages = {"factory": build(root, pki, "factory", "1.0.0", 1, "--app", str(factory))}
    for name, fmt in (("bin", "bin"), ("hex", "hex"), ("elf", "elf")):
        version = UPDATES[name][0]
        packages[name] = build(root, pki, name, version, 2, "--app", str(DATA / f"app.{fmt}"))
    image_key = pki / "image-signing.key"
    for name, key_format in (("imgtool-keyhash", "hash"), ("imgtool-fullkey", "full")):
        version, header_version = UPDATES[name]
        signed = root / f"{name}.signed.bin"
        imgtool_sign(image_key, DATA / "app.bin", signed, "--version", header_version,
                     "--security-counter", "2", "--public-key-format", key_format)  # fmt: skip
        packages[name] = build(root, pki, name, version, 2, "--image", f"app={signed}")

    no_counter, other_counter = root / "no-counter.bin", root / "other-counter.bin"
    imgtool_sign(image_key, DATA / "app.bin", no_counter, "--version", "1.6.0+0")
    imgtool_sign(image_key, DATA / "app.bin", other_counter, "--version", "1.6.0+0",
                 "--security-counter", "6")  # fmt: skip
    base = build(root, pki, "base-1.6.0", "1.6.0", 7, "--app", str(DATA / "app.bin"))
    packages["no-security-counter"] = forge_app(
        base, no_counter.read_bytes(), pki, root / "no-security-counter.bmsfw"
    )
    packages["other-security-counter"] = forge_app(
        base, other_counter.read_bytes(), pki, root / "other-security-counter.bmsfw"
    )
    counter_7 = root / "counter-7.bin"
    imgtool_sign(image_key, DATA / "app.bin", counter_7, "--version", "1.6.0+0",
                 "--security-counter", "7")  # fmt: skip
    packages["counter-7"] = build(root, pki, "counter-7", "1.6.0", 7, "--app", str(counter_7))
    packages["other-hardware"] = build(
        root, pki, "other-hardware", "1.6.0", 2, "--app", str(DATA / "app.bin"), model="BMS-8S"
    )
    template = root / "template"
    run_bmsfw("sim", "provision", "--state-dir", str(template), "--pki", str(pki),
              "--package", str(packages["factory"]), "--nodes", str(len(NODES)),
              check=0)  # fmt: skip
    profile = root / "profile.toml"
    profile.write_text("[preflight]\nsupply_window_s = 0.2\n")
    return Vendor(root, pki, chain, key, packages, template, profile)


@dataclass(frozen=True)
class Bench:
    sim: SimProcess
    link: tuple[str, ...]  # e.g. ("--can", LINK) or ("--serial", PTY)
    node_option: str  # "--node" or "--unit"


@pytest.fixture(scope="module", params=["can", "rs485"])
def bench(
    request: pytest.FixtureRequest, vendor: Vendor, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bench]:
    from bmsfw.sim.lab import unique_multicast_link

    sim = SimProcess(vendor.template, tmp_path_factory.mktemp(f"bench-{request.param}"),
                     time_scale=TIME_SCALE)  # fmt: skip
    nodes = ("--nodes", str(len(NODES)))
    if request.param == "can":
        link = unique_multicast_link()
        sim.start("can", "--bus", link, *nodes)
        bench = Bench(sim, ("--can", link), "--node")
    else:
        info = sim.start("rs485", *nodes)
        bench = Bench(sim, ("--serial", str(info["port"])), "--unit")
    try:
        yield bench
    finally:
        sim.stop()


@pytest.fixture(scope="module", params=["can", "rs485"])
def fresh_bms(
    request: pytest.FixtureRequest, vendor: Vendor, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SimProcess, tuple[str, ...]]]:
    """One factory-fresh BMS (node/unit 1 of the vendor's template) on its own link."""
    from bmsfw.sim.lab import unique_multicast_link

    sim = SimProcess(vendor.template, tmp_path_factory.mktemp(f"fresh-{request.param}"),
                     time_scale=TIME_SCALE)  # fmt: skip
    if request.param == "can":
        link = unique_multicast_link()
        sim.start("can", "--bus", link)
        args: tuple[str, ...] = ("--can", link, "--node", "1")
    else:
        args = ("--serial", str(sim.start("rs485")["port"]), "--unit", "1")
    try:
        yield sim, args
    finally:
        sim.stop()
