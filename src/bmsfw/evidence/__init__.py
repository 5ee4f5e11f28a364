"""bmsfw.evidence: what an auditor asks for, written by the tool itself.

* :mod:`bmsfw.evidence.compliance` — the requirements catalogue joined with the
  recorded test results: requirement -> tests -> pass/fail (``make compliance``).
* :mod:`bmsfw.evidence.bundle` — the evidence bundle of one update on one BMS:
  build it, verify it (``bmsfw evidence verify``).
* :mod:`bmsfw.evidence.collect` — taps the links during ``bmsfw update
  --evidence DIR`` and writes the bundles.

Pure cores over typed inputs; the files around them are written by their callers.
"""

from bmsfw.evidence.errors import (
    CatalogueInvalidError,
    EvidenceBundleTamperedError,
    EvidenceBundleUnreadableError,
    EvidenceError,
    TestResultsUnreadableError,
)

__all__ = [
    "CatalogueInvalidError",
    "EvidenceBundleTamperedError",
    "EvidenceBundleUnreadableError",
    "EvidenceError",
    "TestResultsUnreadableError",
]
