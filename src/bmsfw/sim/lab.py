"""A bench in a few calls: vendor PKI, tester certificate, signed releases, provisioned BMS.

For firmware engineers who write their own bench or integration tests with bmsfw as a
library (and for bmsfw's own tests and benchmarks). Every piece is the real thing: a
real ed25519 vendor PKI, MCUboot images signed and packaged exactly as a release server
would, packages verified by the same code a BMS runs, and virtual BMS state directories
provisioned with the vendor's key hashes fused into OTP. Nothing here is a stand-in, so
a test built from these parts exercises the same paths as the field.

Typical use::

    pki = lab_pki()
    v1 = signed_release(pki, "1.0.0", 1, spec=spec)
    v2 = signed_release(pki, "1.1.0", 2, spec=spec, encoding="zstd")
    state = provision_nodes(tmp_path / "sim", pki, v1.image, (1, 2), spec=spec)
    link = unique_multicast_link("@500k")
    with SimCanProcess(link, state, (1, 2)):
        ...  # update with tester_for(pki) as the credentials

The functions are small and composable on purpose: a bench that needs a revoked key, an
odd hardware revision or a broken image changes one argument rather than copying a
fixture.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict, Unpack

from cryptography.hazmat.primitives import serialization

from bmsfw.package import (
    Algorithm,
    ComponentSource,
    HardwareCompat,
    Manifest,
    TrustAnchors,
    VendorPki,
    build_release,
    create_pki,
    decode_header,
    key_hash,
    public_key_der,
    release_header,
    sign_release,
    verify_release,
)
from bmsfw.package._encrypt import EncPublicKey
from bmsfw.protocol.session import TesterCredentials
from bmsfw.protocol.uds import issue_tester_certificate, stored_component, tester_credentials
from bmsfw.sim.images import make_app_payload
from bmsfw.sim.provision import provision
from bmsfw.sim.sim_can import node_state_dir
from bmsfw.sim.spec import DeviceSpec

__all__ = [
    "DEFAULT_SERIAL_FORMAT",
    "LabRelease",
    "TesterFiles",
    "lab_pki",
    "provision_nodes",
    "signed_package",
    "signed_release",
    "tester_for",
    "trust_anchors",
    "unique_multicast_link",
    "write_tester_files",
]

DEFAULT_SERIAL_FORMAT = "BMS{node:07d}"

# Multicast groups 239.77.x.y (administratively scoped, RFC 2365) and UDP ports
# 40000..59999. The port is what keeps links apart: a udp_multicast bus binds its
# port on every address, and Linux hands a multicast datagram to every socket bound
# to that port whatever group it joined (IP_MULTICAST_ALL). Each process walks the
# ports from an offset of its own (the pid times a prime stride: processes started
# one after another, such as pytest-xdist workers, start 1009 ports apart; a stride
# of 7 let one worker's 8th link meet the next worker's 1st), and skips a port that
# a socket on this machine has bound (a bus of another process that is running).
_MULTICAST_PREFIX = "239.77"
_PORT_BASE = 40_000
_PORT_SPAN = 20_000
_PORT_STRIDE = 1009
_link_counter = itertools.count(0)


@dataclass(frozen=True)
class LabRelease:
    """A signed release package and the views of it a bench needs.

    ``image`` is the decoded MCUboot image of the app (what ends up in a flash bank);
    it is empty for a delta release (the image exists only with the base at hand).
    ``stored`` is the app component as the package stores it (raw, compressed, patch
    or encrypted): the bytes an encoded transfer sends.
    """

    version: str
    security_counter: int
    package: bytes
    header: bytes
    image: bytes
    stored: bytes

    @property
    def manifest(self) -> Manifest:
        """The signed manifest carried in the release header."""
        return Manifest.from_json_bytes(decode_header(self.header).manifest)


@dataclass(frozen=True)
class TesterFiles:
    """A technician's files on disk: vendor root certificate, tester chain and key (PEM)."""

    trust: Path
    tester_cert: Path
    tester_key: Path


def lab_pki(*, backdate_s: float = 86_400.0, algorithm: Algorithm = "ed25519") -> VendorPki:
    """A fresh vendor PKI (root, intermediate, image-signing key).

    Its certificates start ``backdate_s`` in the past, so a virtual BMS whose clock
    lags the host a little still finds them valid.
    """
    now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=backdate_s)
    return create_pki(algorithm, now=now)


def trust_anchors(pki: VendorPki) -> TrustAnchors:
    """What a BMS provisioned by :func:`provision_nodes` trusts: the root and image key."""
    return TrustAnchors.from_key_hashes([key_hash(pki.root_key)]).with_image_key_hashes(
        [key_hash(pki.image_signing_key)]
    )


def tester_for(pki: VendorPki, *, name: str = "service-tester") -> TesterCredentials:
    """Tester credentials (key + certificate chain) issued by the vendor's intermediate CA."""
    key, cert = issue_tester_certificate(
        pki.intermediate_key, pki.intermediate_certificate, name=name
    )
    return tester_credentials(key, cert, [pki.intermediate_certificate, pki.root_certificate])


def write_tester_files(pki: VendorPki, directory: Path) -> TesterFiles:
    """Write ``root-ca.crt``, ``tester.crt`` (chain, leaf first) and ``tester.key`` (PKCS#8).

    These are the files ``bmsfw update --trust/--tester-cert/--tester-key`` takes.
    """
    credentials = tester_for(pki)
    files = TesterFiles(
        directory / "root-ca.crt", directory / "tester.crt", directory / "tester.key"
    )
    directory.mkdir(parents=True, exist_ok=True)
    files.trust.write_bytes(pki.root_certificate.public_bytes(serialization.Encoding.PEM))
    files.tester_cert.write_bytes(credentials.certificate_chain_pem)
    files.tester_key.write_bytes(credentials.private_key_pem)
    return files


def signed_package(
    pki: VendorPki,
    version: str,
    security_counter: int,
    *,
    spec: DeviceSpec,
    size: int = 4096,
    behaviour: str | None = None,
    payload: bytes | None = None,
    image: bytes | None = None,
    encoding: str = "raw",
    delta_from: bytes | None = None,
    encrypt_to: EncPublicKey | None = None,
    revisions: Sequence[str] | None = None,
    product: str | None = None,
    min_bootloader_version: str = "2.0.0",
    safety_class: Literal["standard", "safety-critical"] = "standard",
) -> bytes:
    """A signed ``.bmsfw`` package with one ``app`` component, for ``spec``'s hardware.

    The app is ``payload`` if given, else a generated firmware of ``size`` bytes that
    reports ``version`` and acts out ``behaviour`` (see :data:`bmsfw.sim.BEHAVIOURS`);
    ``image`` instead ships an already-built MCUboot image. ``delta_from`` (a base
    image) stores the app as a patch against it; ``encrypt_to`` encrypts it for one
    device key. ``revisions`` defaults to ``spec.hw_revision`` alone, ``product`` to
    "<model> firmware".
    """
    if image is not None:
        source = ComponentSource.image("app", image)
    else:
        if payload is None:
            payload = make_app_payload(version, size=size, behaviour=behaviour)
        source = ComponentSource.firmware("app", payload)
    unsigned = build_release(
        product=product if product is not None else f"{spec.model} firmware",
        version=version,
        security_counter=security_counter,
        hardware=HardwareCompat(
            spec.model, tuple(revisions) if revisions is not None else (spec.hw_revision,)
        ),
        min_bootloader_version=min_bootloader_version,
        components=[source],
        image_signing_key=pki.image_signing_key,
        safety_class=safety_class,
        encoding=encoding,
        delta_from={"app": delta_from} if delta_from is not None else None,
        encrypt_to=encrypt_to,
    )
    return sign_release(unsigned, pki.signer())


class PackageOptions(TypedDict, total=False):
    """The optional keywords of :func:`signed_package` (its signature has their defaults)."""

    size: int
    behaviour: str | None
    payload: bytes | None
    image: bytes | None
    encoding: str
    delta_from: bytes | None
    encrypt_to: EncPublicKey | None
    revisions: Sequence[str] | None
    product: str | None
    min_bootloader_version: str
    safety_class: Literal["standard", "safety-critical"]


def signed_release(
    pki: VendorPki,
    version: str,
    security_counter: int,
    *,
    spec: DeviceSpec,
    **options: Unpack[PackageOptions],
) -> LabRelease:
    """:func:`signed_package` (same arguments), verified against ``pki`` and split into
    the bench's views.

    Verification runs the host-side checks a tester runs before any transfer, so a
    release that a bench could not use fails here, not halfway into an update.
    """
    package = signed_package(pki, version, security_counter, spec=spec, **options)
    verified = verify_release(package, trust_anchors(pki), None)
    return LabRelease(
        version=version,
        security_counter=security_counter,
        package=package,
        header=release_header(package),
        # a delta's image cannot be rebuilt on the host (no base): it stays empty
        image=verified.images.get("app", b""),
        stored=stored_component(package, verified.manifest),
    )


def provision_nodes(
    state_dir: Path,
    pki: VendorPki,
    initial_image: bytes,
    nodes: Sequence[int] = (1,),
    *,
    spec: DeviceSpec,
    serial_format: str = DEFAULT_SERIAL_FORMAT,
) -> Path:
    """Provision one virtual BMS per node under ``state_dir``, all running ``initial_image``.

    Each node's OTP holds the vendor's root and image key hashes; its serial is
    ``serial_format.format(node=node)``. Returns ``state_dir``, ready for
    ``SimCanProcess`` / ``SimRs485Process``.
    """
    for node in nodes:
        provision(
            node_state_dir(state_dir, node),
            initial_image=initial_image,
            root_key_hash=key_hash(pki.root_key),
            image_key_hash=key_hash(pki.image_signing_key),
            image_public_key=public_key_der(pki.image_signing_key),
            spec=spec,
            serial=serial_format.format(node=node),
        )
    return state_dir


def _port_bound(port: int) -> bool:
    """Whether a socket on this machine has bound UDP ``port`` (a bind without
    SO_REUSEADDR/SO_REUSEPORT fails then)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return True
    return False


def unique_multicast_link(*extra: str) -> str:
    """A ``udp_multicast`` CAN link that no other link of this process or any other shares.

    ``extra`` are link options, e.g. ``"@500k"``, ``"throttle"`` or ``"@500k/2M,throttle"``:
    a bit-rate part (``@...``) joins the channel, the rest are appended after the port.
    Safe for tests run in parallel processes and for many benches in one process.
    """
    options = [part for item in extra for part in item.split(",") if part]
    rates = "".join(part for part in options if part.startswith("@"))
    pid = os.getpid()
    for _ in range(_PORT_SPAN):
        n = next(_link_counter)
        port = _PORT_BASE + (pid * _PORT_STRIDE + n) % _PORT_SPAN
        if not _port_bound(port):
            break
    else:
        raise OSError(f"no free UDP port for a multicast link in {_PORT_BASE}..")
    group = f"{_MULTICAST_PREFIX}.{pid % 250}.{n % 250 + 1}"
    rest = [part for part in options if not part.startswith("@")]
    return ",".join([f"udp_multicast:{group}{rates}", f"port={port}", *rest])
