"""Dashboard sessions live in the database: two real server processes (``bmsfw fleet
serve`` over HTTPS, each in its own working directory) on one database know the same
sessions; a session outlives the process that opened it; signing out through one
process ends it in the other; the database holds only hashes of session ids. In
process (fake clock): idle and absolute expiry, and the bound per credential."""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from bmsfw.fleet.bootstrap import create_token, init_database
from bmsfw.fleet.testing import TestTlsFiles, write_test_ca_and_server
from fleet import conftest as fleet_fixtures
from fleet.conftest import Fleet
from server_support import serve_process

from .test_routes import _sign_in, https_fleet

db_url = fleet_fixtures.db_url
pki = fleet_fixtures.pki
root_pem = fleet_fixtures.root_pem
fleet = fleet_fixtures.fleet
config_overrides = fleet_fixtures.config_overrides
__all__ = ["https_fleet"]

COOKIE = "__Host-bmsfw_session"


@contextmanager
def _server(db: str, workdir: Path, root: Path, tls: TestTlsFiles) -> Iterator[str]:
    """``bmsfw fleet serve`` in its own process, over HTTPS; stopped on exit."""
    workdir.mkdir(exist_ok=True)
    args = ["--db", db, "--trust-root", str(root), "--access-log", ""]
    with serve_process(args, cwd=workdir, tls=tls) as server:
        yield server.url


def _browser(url: str, tls: TestTlsFiles) -> httpx.Client:
    return httpx.Client(
        base_url=url,
        verify=ssl.create_default_context(cafile=str(tls.ca)),
        timeout=30,
        follow_redirects=True,
    )


def _sign_in_over(client: httpx.Client, token: str) -> str:
    """Sign in through the form; returns the session id the browser was given."""
    form = client.get("/ui/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert nonce
    signed = client.post("/ui/login", data={"csrf": nonce.group(1), "token": token})
    assert signed.status_code == 200 and "Fleet overview" in signed.text, signed.text
    return str(client.cookies[COOKIE])


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found
    return found.group(1)


def _stored_sessions(db: str) -> list[tuple[str, str]]:
    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id_hash, token_hash FROM dashboard_sessions"))
            return [(r[0], r[1]) for r in rows]
    finally:
        engine.dispose()


@pytest.mark.req("IEC62443-CR1.5")
def test_sessions_are_shared_by_server_processes_and_outlive_them(
    db_url: str, tmp_path: Path, root_pem: bytes
) -> None:
    admin = init_database(db_url)
    assert admin is not None
    operator = str(create_token(db_url, role="operator", name="op-1")["token"])
    root = tmp_path / "root.pem"
    root.write_bytes(root_pem)
    tls = write_test_ca_and_server(tmp_path, ca_name="bmsfw sessions test CA")

    with _server(db_url, tmp_path / "a", root, tls) as url_a:
        with _browser(url_a, tls) as on_a:
            session_id = _sign_in_over(on_a, operator)
        stored = _stored_sessions(db_url)
        # Only hashes: a copy of the database yields no usable cookie.
        assert stored == [
            (
                hashlib.sha256(session_id.encode()).hexdigest(),
                hashlib.sha256(operator.encode()).hexdigest(),
            )
        ]
    # Process A is gone; B and C (started afterwards) know the session.
    with (
        _server(db_url, tmp_path / "b", root, tls) as url_b,
        _server(db_url, tmp_path / "c", root, tls) as url_c,
        _browser(url_b, tls) as on_b,
        _browser(url_c, tls) as on_c,
    ):
        for client in (on_b, on_c):
            client.cookies.set(COOKIE, session_id, domain="127.0.0.1")
        page = on_b.get("/ui/devices", follow_redirects=False)
        assert page.status_code == 200 and "op-1" in page.text
        # The CSRF token of a page rendered by B is accepted by C (same session).
        csrf = _csrf(page.text)
        forged = on_c.post("/ui/logout", data={"csrf": "forged"}, follow_redirects=False)
        assert forged.status_code == 403 and "BMSFW-E640" in forged.text
        assert len(_stored_sessions(db_url)) == 1  # a refused sign-out ends nothing
        out = on_c.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        assert _stored_sessions(db_url) == []  # signing out deletes the row
        on_b.cookies.set(COOKIE, session_id, domain="127.0.0.1")
        again = on_b.get("/ui/devices", follow_redirects=False)
        assert again.status_code == 303 and again.headers["location"].startswith("/ui/login")


def test_sessions_expire_idle_and_absolute_and_are_bounded(https_fleet: Fleet) -> None:
    fleet = https_fleet
    _sign_in(fleet, "viewer")
    for _ in range(2):  # used every 29 min: the 30 min idle limit is never reached
        fleet.clock.advance(29 * 60)
        assert fleet.client.get("/ui/", follow_redirects=False).status_code == 200
    fleet.clock.advance(31 * 60)
    assert fleet.client.get("/ui/", follow_redirects=False).status_code == 303
    _sign_in(fleet, "viewer")
    for _ in range(19):
        fleet.clock.advance(25 * 60)
        assert fleet.client.get("/ui/", follow_redirects=False).status_code == 200
    # 475 min after sign-in, used every 25 min: the absolute 8 h end still comes.
    fleet.clock.advance(6 * 60)
    assert fleet.client.get("/ui/", follow_redirects=False).status_code == 303
    # A credential signing in again and again holds at most 20 sessions; expired ones
    # are deleted on the way.
    for _ in range(25):
        _sign_in(fleet, "operator")
    rows = _stored_sessions(fleet.db_url)
    assert len(rows) == 20
    assert {t for _, t in rows} == {hashlib.sha256(fleet.tokens["operator"].encode()).hexdigest()}
