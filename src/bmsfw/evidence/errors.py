"""Errors of the evidence layer: the requirements catalogue, test results, bundles.

Codes BMSFW-E540..E549 (the update procedure's family: an evidence bundle is the
record of one update).
"""

from __future__ import annotations

from bmsfw.errors import UpdateError

__all__ = [
    "CatalogueInvalidError",
    "EvidenceBundleTamperedError",
    "EvidenceBundleUnreadableError",
    "EvidenceError",
    "TestResultsUnreadableError",
]


class EvidenceError(UpdateError):
    """Base of the evidence errors."""

    code = "BMSFW-E540"
    diagnosis = "Evidence (catalogue, test results or bundle) could not be used."
    remedy = "Read the message: it names the file and what is wrong with it."


class CatalogueInvalidError(EvidenceError):
    code = "BMSFW-E541"
    diagnosis = "The requirements catalogue is not valid (missing field, repeated id, bad TOML)."
    remedy = "Fix the entry the message names in requirements/requirements.toml."


class TestResultsUnreadableError(EvidenceError):
    __test__ = False  # not a pytest test class despite the name

    code = "BMSFW-E542"
    diagnosis = "The recorded test results are missing or not a bmsfw test-results file."
    remedy = "Run `make test` (it records the results), then `make compliance`."


class EvidenceBundleUnreadableError(EvidenceError):
    code = "BMSFW-E543"
    diagnosis = "The file is not a readable evidence bundle (not a zip, or no manifest)."
    remedy = "Check that you named the .zip written by `bmsfw update --evidence DIR`."


class EvidenceBundleTamperedError(EvidenceError):
    code = "BMSFW-E544"
    diagnosis = (
        "The evidence bundle does not match its manifest: a file was changed, added or removed."
    )
    remedy = (
        "Do not use this bundle as a record; fetch the original from where the update stored it."
    )
