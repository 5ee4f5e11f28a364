"""`bmsfw package` and `bmsfw keys` on hostile and broken inputs: a coded error, never a traceback.

Every command is run through the real entry point with files a user might
pass by mistake or an attacker might craft (random bytes, markup-like text,
a damaged HEX or ELF, a zip with a markup-like member name). The command must
end with a documented exit code and a BMSFW-Exxx code, and with ``--json``
its stdout must be one JSON document naming that code.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmsfw.cli import main
from package.conftest import run_cli

DATA = Path(__file__).resolve().parents[1] / "firmware_inputs" / "data"


def _zip_with(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("manifest.json", '{"product": "[bold]x[/]"}')
        archive.writestr(name, b"\x00" * 8)
    return buf.getvalue()


HOSTILE = {
    "random": bytes(range(256)) * 3,
    "empty": b"",
    "markup": b"Fixes [/] and [bold red]boom[/]\x1b[31m\n",
    "broken-hex": (DATA / "app.hex").read_bytes()[:200] + b"zz\n",
    "broken-elf": (DATA / "app.elf").read_bytes()[:300],
    "zip-markup-member": _zip_with("components/x[/].bin"),
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "pki"
    main(["keys", "init", str(root)])
    return root


def _commands(pki: Path, bad: Path, out: Path) -> list[list[str]]:
    build = ["package", "build", "--product", "p", "--version", "1.0.0", "--security-counter"]
    build += ["1", "--hw-model", "M", "--hw-revision", "A", "--pki", str(pki), "-o", str(out)]
    tester_out = ["--cert-out", str(out), "--key-out", str(out.with_suffix(".key"))]
    return [
        [*build, "--app", str(bad)],
        [*build, "--image", f"app={bad}"],
        [*build, "--app", str(DATA / "app.bin"), "--image-key", str(bad)],
        [*build, "--app", str(DATA / "app.bin"), "--notes-file", str(bad), "--version", "x[/]"],
        ["package", "sign", str(bad), "--pki", str(pki), "-o", str(out)],
        ["package", "verify", str(bad), "--pki", str(pki)],
        ["package", "verify", str(bad), "--root-cert", str(bad)],
        ["package", "verify", str(bad), "--pki", str(pki), "--image-key", str(bad)],
        ["package", "inspect", str(bad)],
        ["package", "header", str(bad), "-o", str(out)],
        ["keys", "hash", str(bad)],
        ["keys", "revoke", str(pki), str(bad)],
        ["keys", "issue-tester", "--pki", str(bad.parent), *tester_out],
    ]


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_every_command_answers_with_a_code(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    bad = tmp_path / f"{kind}.bin"
    bad.write_bytes(HOSTILE[kind])
    out = tmp_path / "out.bmsfw"
    for i, argv in enumerate(_commands(pki, bad, out)):
        if i == 0 and kind == "random":
            continue  # any bytes are a valid raw firmware binary
        code, stdout, stderr = run_cli(capsys, *argv)
        assert code in (2, 3), (argv, code, stderr)
        assert "BMSFW-E" in stderr and "Traceback" not in stderr, (argv, stderr)
        assert not out.exists(), argv
        code_json, stdout, _ = run_cli(capsys, *[*argv, "--json"])
        assert code_json == code
        document = json.loads(stdout)  # one JSON document, also on errors
        assert document["error"]["code"].startswith("BMSFW-E"), (argv, document)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=600) | st.text(max_size=200).map(str.encode))
def test_random_files_never_escape(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes
) -> None:
    bad = tmp_path / "fuzz.bin"
    bad.write_bytes(data)
    out = tmp_path / "fuzz-out.bmsfw"
    for i, argv in enumerate(_commands(pki, bad, out)):
        code, _, stderr = run_cli(capsys, *argv)  # anything but SystemExit escaping fails the test
        if i == 0 and code == 0:  # --app: random bytes can be a raw binary
            out.unlink()
            continue
        assert code in (2, 3) and "BMSFW-E" in stderr, (argv, stderr)
        assert not out.exists()
