"""docs/threat-model.md says which test shows each claim: every test it names exists.

A reference is a backticked ``path.py`` or ``path.py::test_name``; a bare file name is
looked up in the directory of the last full path named before it (the page's tables
name a directory once per row), else anywhere under tests/ when unique; ``::test_name``
alone is in the file named last on the same line.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"`([\w/.-]+?\.py(?:::\w+)?|::\w+)`")


def _resolve(path: str, last_dir: Path | None) -> Path | None:
    if "/" in path:
        return ROOT / path if (ROOT / path).is_file() else None
    if last_dir is not None and (last_dir / path).is_file():
        return last_dir / path
    found = [p for p in (ROOT / "tests").rglob(path) if p.is_file()]
    return found[0] if len(found) == 1 else None


def test_every_test_the_threat_model_names_exists() -> None:
    text = (ROOT / "docs" / "threat-model.md").read_text(encoding="utf-8")
    missing: list[str] = []
    last_dir: Path | None = None
    named = 0
    for line in text.splitlines():
        current: Path | None = None
        for ref in REFERENCE.findall(line):
            path, _, name = ref.partition("::")
            if path:
                if "/" in path and not path.startswith(("tests/", "benchmarks/")):
                    continue  # a source file (src/...), not a test
                current = _resolve(path, last_dir)
                if current is None:
                    missing.append(ref)
                    continue
                last_dir = current.parent
            if name:
                named += 1
                body = current.read_text(encoding="utf-8") if current else ""
                if not re.search(rf"^def {name}\(", body, re.MULTILINE):
                    missing.append(ref)
    assert named > 40, named  # the parser still finds the page's references
    assert not missing, f"docs/threat-model.md names tests that do not exist: {missing}"
