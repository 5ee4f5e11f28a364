"""One rendering rule for the whole CLI (docs/cli.md, "Untrusted text"): text from a
package, a BMS, an audit log, a report file or the command line is never interpreted
as rich markup and never reaches the terminal with a control character.

Hypothesis feeds markup-like and control-character strings through every error and
report path — error rendering, ``bmsfw report`` (text and ``--json``), ``report
--audit``, ``package inspect``/``verify`` (release notes, product, zip entry names,
device facts), link names and option values, and ``info`` from a virtual BMS whose
serial and model carry them — and asserts: no exception escapes (no traceback and no
internal error E000), every markup tag prints literally, no control character is
written, and every ``--json`` output is one valid JSON document.

The commands run in this process through ``bmsfw.cli.main`` (the console script's
entry point), their output captured from stdout and stderr.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import pkgutil
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import bmsfw
from bmsfw.cli import main
from bmsfw.cli._render import SafeConsole, SafeLogFormatter, line, one_line, print_error
from bmsfw.errors import BmsfwError, all_error_classes
from bmsfw.protocol.session import DeviceIdentity, SelfTestCheck
from bmsfw.sim import DeviceSpec, FlashSpec
from bmsfw.sim.lab import lab_pki, provision_nodes, signed_package, write_tester_files
from bmsfw.sim.sim_can import CanSimConfig, CanSimulator
from bmsfw.update.audit import AuditLog
from bmsfw.update.backup import ConfigChange
from bmsfw.update.preflight import CheckResult
from bmsfw.update.report import (
    ErrorRecord,
    Outcome,
    PackageRecord,
    SelfTestRecord,
    StepRecord,
    UpdateReport,
)

# What an attacker (or an unlucky device) puts in a string: rich markup, emoji codes,
# ANSI CSI/OSC sequences, BEL, CR and backspace tricks, C1 controls (0x9b is a one-byte
# CSI), DEL, NUL, bidi overrides, a forged line.
FRAGMENTS = (
    "[/]",
    "x[/]",
    "[bold]",
    "[/bold]",
    "[link=https://evil.example]click[/link]",
    "[red on white]",
    ":warning:",
    "\x1b[2J",
    "\x1b[H",
    "\x1b]0;title\x07",
    "\x1b]8;;https://evil.example\x1b\\",
    "\x07",
    "\r",
    "\x08",
    "\x9b31m",
    "\x85",
    "\x7f",
    "\x00",
    "\u202e",
    "\u2028",
    "\nremedy:    fake",
    "UPDATED OK",
)
hostile = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), min_size=1, max_size=6
).map("".join)
# Printable ASCII (what a DID or a Modbus string register can carry) with the markup
# and the 7-bit controls an attacker would use.
hostile_ascii = st.lists(
    st.one_of(
        st.sampled_from([f for f in FRAGMENTS if f.isascii()]),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=4),
    ),
    min_size=1,
    max_size=4,
).map("".join)

# Every control character a terminal acts on (tab and newline are ours to write).
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# A markup tag or emoji code of printable ASCII: it must be printed as typed.
TAG = re.compile(r"\[[ -Z^-~]*\]|:[a-z_]+:")
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> object:
        assert self.out.isascii(), self.out
        return json.loads(self.out)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    """``bmsfw ARGS`` in this process, like the console script."""
    capsys.readouterr()
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def assert_safe(result: Run, *texts: str, internal_error_expected: bool = False) -> None:
    """No traceback, no internal error, no control character, every tag literal."""
    output = result.out + result.err
    assert "Traceback" not in output, output
    if not internal_error_expected:
        assert "BMSFW-E000" not in output, output
        assert result.code != 1, output
    found = CONTROL.search(output)
    assert found is None, f"control character {found.group()!r} written: {output!r}"
    for text in texts:
        for tag in TAG.findall(text):
            assert tag in output, f"markup {tag!r} was interpreted: {output!r}"


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    # No wrapping: a tag must come out on one line for the check above to find it.
    monkeypatch.setenv("COLUMNS", "4000")


# --- the rule itself --------------------------------------------------------------


@given(text=hostile)
def test_safe_text_leaves_no_control_and_keeps_what_is_printable(text: str) -> None:
    shown = one_line(text)
    assert CONTROL.search(shown) is None
    assert "\n" not in shown and "\t" not in shown
    if text.isprintable():
        assert shown == text
    for char in set(text):
        if char.isprintable():
            assert shown.count(char) >= text.count(char)


@given(text=hostile)
def test_a_terminal_gets_only_our_colours(text: str) -> None:
    """On a real terminal the only escape sequences written are rich's own colours."""
    out = io.StringIO()
    terminal = SafeConsole(file=out, force_terminal=True, width=4000, color_system="standard")
    terminal.print(line(("error", "bold red"), f" {text}"))
    terminal.print(f"plain {text}")
    written = out.getvalue()
    without_colours = re.sub(r"\x1b\[[0-9;]*m", "", written)
    assert CONTROL.search(without_colours) is None, repr(written)
    for tag in TAG.findall(text):
        assert tag in without_colours


@given(text=hostile)
def test_log_lines(text: str) -> None:
    record = logging.LogRecord(
        "bmsfw.x", logging.INFO, __file__, 1, "node %s: %s", ("1", text), None
    )
    shown = SafeLogFormatter("%(levelname)s %(message)s").format(record)
    assert CONTROL.search(shown) is None
    for tag in TAG.findall(text):
        assert tag in shown


@pytest.fixture(scope="module")
def every_error_class() -> list[type[BmsfwError]]:
    for info in pkgutil.walk_packages(bmsfw.__path__, "bmsfw."):
        importlib.import_module(info.name)
    return all_error_classes()


@SETTINGS
@given(message=hostile)
def test_every_error_class_prints_safely(
    capsys: pytest.CaptureFixture[str], every_error_class: list[type[BmsfwError]], message: str
) -> None:
    for cls in every_error_class:
        print_error(cls(message))
    captured = capsys.readouterr()
    assert_safe(Run(2, captured.out, captured.err), message, internal_error_expected=True)
    assert one_line(message) in captured.err


# --- arguments and link names -----------------------------------------------------


@SETTINGS
@given(text=hostile)
def test_link_names_and_option_values(capsys: pytest.CaptureFixture[str], text: str) -> None:
    text = f"x{text}"  # a value, not an option
    for args in (
        ("info", "--can", text, "--node", "1"),
        ("info", "--can", f"virtual:x,{text}", "--node", "1"),
        ("scan", "--can", "virtual:x", "--first", text),
        ("update", "--can", "virtual:x", "--node", "1", text),
        ("package", "verify", text),
        ("report", text),
    ):
        result = run(capsys, *args)
        assert result.code in (2, 5), result
        assert_safe(result, text)
        as_json = run(capsys, *args, "--json")
        assert_safe(as_json, text)
        error = as_json.json()["error"]  # type: ignore[index]
        assert error["code"].startswith("BMSFW-E") and error["remedy"]
        assert as_json.json()["exit_code"] == as_json.code  # type: ignore[index]


# --- reports and the audit log ----------------------------------------------------


def _report(text: str) -> UpdateReport:
    return UpdateReport(
        node=text,
        outcome=Outcome.ROLLED_BACK,
        operator=text,
        running_version=text,
        device_before=DeviceIdentity("vendor", text, text, text, "1.0", text, 1, "A"),
        package=PackageRecord(product=text, version=text, security_counter=3),
        steps=(StepRecord("transfer", False, 0.0, 1.5, text),),
        error=ErrorRecord("BMSFW-E511", "SelfTestFailedRolledBackError", text, text, text),
        preflight=(CheckResult(text, text, text, passed=False, safety=True),),
        self_test=SelfTestRecord(passed=False, checks=(SelfTestCheck(text, False, text),)),
        config_changes=(ConfigChange(text, text, 1),),
        warnings=(text,),
    )


@SETTINGS
@given(text=hostile)
def test_report_text_and_json(
    capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("report") / "report.json"
    path.write_text(_report(text).to_json(), encoding="utf-8")
    shown = run(capsys, "report", str(path))
    assert shown.code == 0
    assert_safe(shown, text)
    # each value on its own line of the report: a serial cannot forge "result: UPDATED"
    assert f"serial {one_line(text)}" in shown.out
    assert [ln for ln in shown.out.splitlines() if ln.startswith("  result:")] == [
        "  result:          FAILED - ROLLED BACK to the previous firmware"
    ]
    as_json = run(capsys, "report", str(path), "--json")
    assert as_json.code == 0
    assert as_json.json()["device_before"]["serial"] == text  # type: ignore[index]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile, inner, max_size=3),
    max_leaves=8,
)
report_fields = st.sampled_from(
    [
        "node",
        "outcome",
        "device_before",
        "package",
        "steps",
        "error",
        "cause",
        "preflight",
        "confirmations",
        "backup",
        "transfer",
        "self_test",
        "config_changes",
        "warnings",
        "audit_hash",
    ]
)


@SETTINGS
@given(fields=st.dictionaries(report_fields, json_values, max_size=5))
def test_a_report_file_of_another_shape_is_refused_with_its_code(
    capsys: pytest.CaptureFixture[str],
    tmp_path_factory: pytest.TempPathFactory,
    fields: dict[str, object],
) -> None:
    path = tmp_path_factory.mktemp("report") / "report.json"
    path.write_text(json.dumps({"format": "bmsfw-update-report/1", **fields}), encoding="utf-8")
    for args in (("report", str(path)), ("report", str(path), "--json")):
        result = run(capsys, *args)
        assert_safe(result)
        assert result.code in (0, 7)
        if result.code == 7:
            assert "BMSFW-E515" in result.err


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff\xfe\x89PNG",
        b"",
        b"[]",
        b"{",
        b"[" * 100_000,
        b'{"format": 1}',
        "é".encode("latin-1"),
    ],
)
def test_report_on_a_file_that_is_no_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(content)
    result = run(capsys, "report", str(path))
    assert result.code == 7 and "BMSFW-E515" in result.err
    assert_safe(result)
    as_json = run(capsys, "report", str(path), "--json")
    assert as_json.code == 7
    assert as_json.json()["error"]["code"] == "BMSFW-E515"  # type: ignore[index]
    audit = run(capsys, "report", "--audit", str(path), "--json")
    assert_safe(audit)
    if content.strip():
        assert audit.code == 7
        assert audit.json()["error"]["code"] == "BMSFW-E514"  # type: ignore[index]


@SETTINGS
@given(text=hostile)
def test_audit_listing(
    capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    log = AuditLog(path)
    log.append(
        "update",
        {"device": {"model": text, "serial": text}, "package": {"version": text}, "result": text},
        who=f"w{text}",
    )
    log.append("update", {"device": text, "package": [text], "error_code": {"x": text}})
    shown = run(capsys, "report", "--audit", str(path))
    assert shown.code == 0
    assert_safe(shown, text)
    assert one_line(text) in shown.out
    as_json = run(capsys, "report", "--audit", str(path), "--json")
    assert as_json.json()[0]["who"] == f"w{text}"  # type: ignore[index]


# --- packages ---------------------------------------------------------------------

SPEC = DeviceSpec(
    model="BMS-16S",
    hw_revision="C",
    flash=FlashSpec.small(bank_size=64 * 1024, sector_size=4096),
    transfer_block_size=512,
)


@dataclass(frozen=True)
class Lab:
    pki: object
    trust: Path
    tester_cert: Path
    tester_key: Path
    root: Path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    root = tmp_path_factory.mktemp("lab")
    pki = lab_pki()
    files = write_tester_files(pki, root)
    return Lab(pki, files.trust, files.tester_cert, files.tester_key, root)


def _with_entry(package: bytes, name: str) -> bytes:
    buffer = io.BytesIO(package)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr(name, b"extra")
    return buffer.getvalue()


@SETTINGS
@given(text=hostile)
@example(text="\x00[bold]")  # a NUL ends a zip member name: only what precedes it is shown
def test_package_inspect_and_verify(
    capsys: pytest.CaptureFixture[str],
    tmp_path_factory: pytest.TempPathFactory,
    lab: Lab,
    text: str,
) -> None:
    from bmsfw.package import build_release, sign_release
    from bmsfw.package._release import ComponentSource, HardwareCompat

    work = tmp_path_factory.mktemp("pkg")
    unsigned = build_release(
        product="BMS-16S firmware",
        version="1.0.0",
        security_counter=1,
        hardware=HardwareCompat(SPEC.model, (SPEC.hw_revision,)),
        min_bootloader_version="0.0.0",
        components=[ComponentSource.firmware("app", b"\x00" * 256)],
        image_signing_key=lab.pki.image_signing_key,  # type: ignore[attr-defined]
        release_notes=f"Fixes {text}",
    )
    signed = work / "notes.bmsfw"
    signed.write_bytes(sign_release(unsigned, lab.pki.signer()))  # type: ignore[attr-defined]
    extra = work / "entry.bmsfw"
    extra.write_bytes(_with_entry(signed.read_bytes(), f"x[/]{text}"))
    trust = ("--root-cert", str(lab.trust))
    facts = ("--model", text, "--hw-revision", text, "--bootloader", text, "--device-counter", "1")
    # zipfile ends a member name at its first NUL, so only that part can be shown
    member = text.split("\x00", 1)[0]
    for args, shown in (
        (("package", "inspect", str(signed)), text),
        (("package", "inspect", str(extra)), member),
        (("package", "verify", str(signed), *trust), text),
        (("package", "verify", str(extra), *trust), member),
        (("package", "verify", str(signed), *trust, *facts), text),
    ):
        result = run(capsys, *args)
        assert_safe(result, shown)
        as_json = run(capsys, *args, "--json")
        assert_safe(as_json, shown)
        as_json.json()


# --- a device whose strings carry it ----------------------------------------------


@pytest.fixture(scope="module")
def image(lab: Lab) -> bytes:
    from bmsfw.package import verify_release

    package = signed_package(lab.pki, "1.0.0", 1, spec=SPEC, size=2048)  # type: ignore[arg-type]
    from bmsfw.sim.lab import trust_anchors

    return verify_release(package, trust_anchors(lab.pki), None).images["app"]  # type: ignore[arg-type]


_channels = iter(range(1_000_000))


def _strings(data: object) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        data = list(data.values())
    if isinstance(data, list):
        return [s for item in data for s in _strings(item)]
    return []


@contextmanager
def virtual_bms(work: Path, image: bytes, lab: Lab, *, serial: str) -> Iterator[str]:
    """A virtual BMS with this serial on an in-process CAN link; yields the link."""
    pki = lab.pki
    state = provision_nodes(
        work,
        pki,
        image,
        (1,),
        spec=SPEC,
        serial_format=serial.replace("{", "{{").replace("}", "}}"),
    )
    link = f"virtual:render{next(_channels)}"
    with CanSimulator(CanSimConfig(link, (1,), str(state), time_scale=20.0, control_poll_s=0)):
        yield link


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@example(text="x[/]\x1b[2J\x1b]0;title\x07\rUPDATED OK\x7f")
@example(text="[bold][link=https://evil.example]SN[/link]:warning:")
@example(text="\x00")  # trailing NUL: padding of a fixed-width field
@given(text=hostile_ascii)
def test_device_strings(
    capsys: pytest.CaptureFixture[str],
    tmp_path_factory: pytest.TempPathFactory,
    lab: Lab,
    image: bytes,
    text: str,
) -> None:
    serial = f"SN{text}"
    # identity strings are at most 64 characters (longer ones are refused, E363) and a
    # fixed-width field's trailing NULs are padding, not text (bmsfw.protocol.bounds)
    assume(len(serial) <= 64)
    shown_serial = serial.rstrip("\x00")
    work = tmp_path_factory.mktemp("bms")
    with virtual_bms(work, image, lab, serial=serial) as link:
        for args in (
            ("info", "--can", link, "--node", "1"),
            ("scan", "--can", link, "--last", "1", "--timeout", "5"),
        ):
            shown = run(capsys, *args)
            assert shown.code == 0
            assert one_line(shown_serial) in shown.out, shown  # shown, as text
            assert_safe(shown, text)
            as_json = run(capsys, *args, "--json")
            assert_safe(as_json, text)
            assert shown_serial in _strings(as_json.json())  # the device's bytes, exactly


def test_device_strings_in_the_other_field_commands(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, lab: Lab, image: bytes
) -> None:
    """preflight, diagnose and backup of a BMS whose serial carries markup and escapes."""
    serial = "SN[/][bold]\x1b]0;title\x07\x1b[2J\rUPDATED OK"
    with virtual_bms(tmp_path / "bms", image, lab, serial=serial) as link:
        for args in (
            ("preflight", "--can", link, "--node", "1"),
            ("diagnose", "--can", link, "--node", "1", "--samples", "2", "--window", "0.2"),
            ("backup", "--can", link, "--node", "1", "--to", str(tmp_path / "backups")),
        ):
            assert_safe(run(capsys, *args))  # (not every one shows the serial)
            as_json = run(capsys, *args, "--json")
            assert_safe(as_json)
            as_json.json()
