"""The dashboard's own refusals (BMSFW-E64x): a form without its CSRF token, a session
that ended. Every other refusal is the API's (sign-in with a bad token is E602, a role
that may not act E603)."""

from __future__ import annotations

from bmsfw.errors import FleetError

__all__ = ["CsrfRefusedError", "SessionEndedError"]


class CsrfRefusedError(FleetError):
    code = "BMSFW-E640"
    http_status = 403
    diagnosis = (
        "A dashboard form arrived without the CSRF token of the signed-in session (or with "
        "another one): it was not sent by a page this server rendered for this session."
    )
    remedy = (
        "Reload the page and submit the form again; if it keeps happening, sign out and in "
        "again (another site may be trying to act through your browser)."
    )


class SessionEndedError(FleetError):
    code = "BMSFW-E641"
    http_status = 401
    diagnosis = (
        "The dashboard session is missing, expired, signed out, or its credential was "
        "revoked or expired."
    )
    remedy = "Sign in again with your API token."
