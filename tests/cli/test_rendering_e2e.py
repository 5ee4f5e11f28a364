"""The reported cases, run as a user runs them (the ``bmsfw`` console script in a
subprocess): the exact error code, the exit code of docs/cli.md, valid JSON on stdout
with ``--json``, text shown literally, and no traceback."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import pytest

from bmsfw.link.canlink import open_can_bus
from bmsfw.link.errors import CanDriverMissingError
from bmsfw.package import HardwareCompat, build_release, sign_release
from bmsfw.package._release import ComponentSource
from bmsfw.sim.lab import lab_pki, write_tester_files
from cli_support import BMSFW

from .conftest import HW_REV, MODEL, Bench, Kit


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def error(self) -> dict[str, Any]:
        """The ``--json`` error document's record (stdout must be exactly one document)."""
        document = json.loads(self.out)
        assert document["exit_code"] == self.code
        return document["error"]  # type: ignore[no-any-return]


def bmsfw(*args: str, env: dict[str, str] | None = None) -> Result:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BMSFW_")}
    environ.update(COLUMNS="200", **(env or {}))
    done = subprocess.run(
        [BMSFW, *args], capture_output=True, text=True, timeout=60, env=environ, check=False
    )
    result = Result(done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr, result
    assert "\x1b" not in done.stdout + done.stderr, result
    return result


def expect(args: list[str], code: str, exit_code: int, *shown: str) -> Result:
    """Both ways: the text error (code and the literal texts on stderr) and ``--json``."""
    text = bmsfw(*args)
    assert text.code == exit_code, text
    assert f"error {code}:" in text.err, text
    assert "remedy:" in text.err, text
    for piece in shown:
        assert piece in text.err, (piece, text)
    as_json = bmsfw(*args, "--json")
    assert as_json.code == exit_code, as_json
    assert as_json.error["code"] == code, as_json
    assert as_json.error["remedy"], as_json
    return as_json


# --- package text -----------------------------------------------------------------


@pytest.fixture(scope="module")
def notes_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A signed release whose notes carry markup and an escape sequence; its root cert."""
    work = tmp_path_factory.mktemp("notes")
    pki = lab_pki()
    files = write_tester_files(pki, work)
    unsigned = build_release(
        product="BMS-16S firmware",
        version="1.0.0",
        security_counter=1,
        hardware=HardwareCompat(MODEL, (HW_REV,)),
        min_bootloader_version="0.0.0",
        components=[ComponentSource.firmware("app", bytes(512))],
        image_signing_key=pki.image_signing_key,
        release_notes="Fixes [/] and [bold]this[/bold]\x1b]0;pwned\x07",
    )
    path = work / "notes.bmsfw"
    path.write_bytes(sign_release(unsigned, pki.signer()))
    return path, files.trust


def test_release_notes_are_shown_as_text(notes_package: tuple[Path, Path]) -> None:
    package, trust = notes_package
    for args in (["package", "inspect", str(package)], ["package", "verify", str(package)]):
        if args[1] == "verify":
            args += ["--root-cert", str(trust)]
        shown = bmsfw(*args)
        assert shown.code == 0, shown
        assert "Fixes [/] and [bold]this[/bold]\\x1b]0;pwned\\x07" in shown.out
        as_json = bmsfw(*args, "--json")
        assert as_json.code == 0
        assert "Fixes [/]" in json.loads(as_json.out)["manifest"]["release_notes"]


def test_a_zip_entry_named_like_markup(kit: Kit, tmp_path: Path) -> None:
    buffer = io.BytesIO(kit.packages["v1"].read_bytes())
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("x[/]", b"extra")
    package = tmp_path / "entry.bmsfw"
    package.write_bytes(buffer.getvalue())
    args = ["package", "verify", str(package), "--root-cert", str(kit.trust)]
    as_json = expect(args, "BMSFW-E101", 3, "unexpected ['x[/]']")
    assert "x[/]" in as_json.error["message"]


def test_a_model_argument_like_markup(kit: Kit) -> None:
    facts = ["--model", "x[/]", "--hw-revision", HW_REV, "--bootloader", "9.0.0"]
    args = ["package", "verify", str(kit.packages["v1"]), "--root-cert", str(kit.trust)]
    expect([*args, *facts, "--device-counter", "0"], "BMSFW-E110", 3, "device is x[/] rev")


@pytest.mark.parametrize(
    "args",
    [
        ["sim", "can", "--bus", "x[/]", "--state-dir", "nowhere"],
        ["info", "--can", "virtual:bench,x[/]", "--node", "1"],
        ["scan", "--can", "virtual:bench,[bold]x[/bold]=1"],
    ],
)
def test_a_malformed_link_name(args: list[str]) -> None:
    expect(args, "BMSFW-E301", 5, "[")


# --- usage errors -----------------------------------------------------------------


def test_usage_errors_carry_a_code_and_json(kit: Kit, tmp_path: Path) -> None:
    link = ["--can", "virtual:bench", "--node", "1"]
    package = str(kit.packages["v1"])
    backup = ["--backup-dir", str(tmp_path / "backups")]
    creds = ["--tester-cert", str(kit.tester_cert), "--tester-key", str(kit.tester_key)]
    # no package
    expect(["update", *link, "--trust", str(kit.trust), *backup], "BMSFW-E002", 2, "PACKAGE")
    # no --trust: the message says what it is and where else it can come from
    error = expect(["update", *link, package, *backup, *creds], "BMSFW-E002", 2, "--trust")
    assert "Vendor root certificate" in error.error["message"]
    assert "BMSFW_TRUST" in error.error["message"]
    # a package that does not exist, a bad number, a bad choice
    missing = str(tmp_path / "nope.bmsfw")
    expect(["update", *link, missing, "--trust", str(kit.trust), *backup], "BMSFW-E003", 2)
    expect(["info", "--serial", "/dev/null", "--unit", "1", "--baud", "fast"], "BMSFW-E003", 2)
    expect(["info", "--serial", "/dev/null", "--frame-gap", "x"], "BMSFW-E003", 2, "'x'")
    expect(["update", "--no-such-option"], "BMSFW-E001", 2, "--no-such-option")
    expect(["preflight", *link, "--package", package], "BMSFW-E001", 2, "--trust")
    assert not (tmp_path / "backups").exists()


def test_update_without_tester_credentials_touches_nothing(
    kit: Kit, make_bench: Callable[..., Bench]
) -> None:
    """Refused before the link is opened: with no simulator running, the answer is the
    credentials error, not a time-out; no backup and no report are written."""
    bench = make_bench()
    args = bench.update_args("v2")
    at = args.index("--tester-cert")
    del args[at : at + 4]
    error = expect(args, "BMSFW-E004", 2, "--tester-cert")
    assert "bmsfw keys issue-tester" in error.error["remedy"]
    assert not (bench.work / "backups").exists()
    rollback = ["rollback", *bench.link_args(), "--backup-dir", str(bench.work / "backups")]
    assert "keys issue-tester" in expect(rollback, "BMSFW-E004", 2).error["remedy"]
    restore = ["restore", *bench.link_args(), str(bench.work / "backup.json")]
    expect(restore, "BMSFW-E004", 2)


# --- files that are not what they should be ---------------------------------------


def test_report_of_a_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    expect(["report", str(path)], "BMSFW-E515", 7, str(path))
    expect(["report", "--audit", str(path)], "BMSFW-E514", 7, str(path))
    expect(["report", str(tmp_path / "absent.json")], "BMSFW-E003", 2, "absent.json")


# --- CAN adapters that are not there ----------------------------------------------


def test_a_can_adapter_without_its_driver() -> None:
    error = expect(["info", "--can", "pcan:PCAN_USBBUS1", "--node", "1"], "BMSFW-E303", 5)
    assert "PCAN-Basic" in error.error["message"]


def test_a_socketcan_interface_that_does_not_exist() -> None:
    """On this machine the kernel may lack SocketCAN (EAFNOSUPPORT) or have it without
    the interface (ENODEV): both are E303 saying what to load or to create."""
    error = expect(["info", "--can", "socketcan:vcan9", "--node", "1"], "BMSFW-E303", 5)
    assert "modprobe" in error.error["message"]


@pytest.mark.parametrize(
    ("number", "what"),
    [(errno.ENODEV, "ip link add dev vcan9 type vcan"), (errno.EAFNOSUPPORT, "modprobe can_raw")],
)
def test_socketcan_errors_from_the_kernel(
    monkeypatch: pytest.MonkeyPatch, number: int, what: str
) -> None:
    """The kernel's answer when opening the socket decides the code (python-can's
    ``Bus`` stands in for the kernel here: this machine has no CAN)."""

    def bus(**_: Any) -> can.BusABC:
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(can, "Bus", bus)
    with pytest.raises(CanDriverMissingError, match=what.replace(" ", ".")):
        open_can_bus("socketcan:vcan9")


def test_a_token_file_that_is_not_text(kit: Kit, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_bytes(b"\x00\xff\xfe")
    state = ["--state-dir", str(tmp_path / "agent"), "--sim", "1", "--once"]
    agent = ["agent", "--server", "http://127.0.0.1:9", "--token-file", str(token)]
    expect([*agent, "--trust-root", str(kit.trust), *state], "BMSFW-E001", 2, "not a text file")


def test_json_of_several_nodes_is_one_document(make_bench: Callable[..., Bench]) -> None:
    """`diff --json` over two BMS: one JSON list on stdout (was one document per node)."""
    bench = make_bench((1, 2))
    bench.start()
    backup_dir = bench.work / "manual"
    made = json.loads(bmsfw("backup", *bench.link_args(1), "--to", str(backup_dir), "--json").out)
    diff = bmsfw("diff", *bench.link_args(1, 2), made[0]["path"], "--json")
    assert diff.code == 0, diff
    documents = json.loads(diff.out)
    assert [d["backup"] for d in documents] == [made[0]["path"]] * 2
