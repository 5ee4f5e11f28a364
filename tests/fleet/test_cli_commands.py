"""The fleet CLI with no curl: `bmsfw fleet releases / devices / gateways / campaigns /
flags / audit`, `token revoke`, `site windows`, `release deactivate`, `gateway
decommission`, `device decommission / move`, `campaign ID devices`, each run as a user
would (its own process) against a real server (uvicorn, HTTPS, test CA) with the token
in a file; tables by default, `--json` for scripts, exit codes as docs/cli.md says."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bmsfw.fleet.app import ServerConfig, create_app
from bmsfw.fleet.bootstrap import create_token, init_database
from bmsfw.fleet.client import ClientConfig, FleetClient
from bmsfw.fleet.testing import write_test_ca_and_server
from cli_support import run_bmsfw
from server_support import serve_https

from .conftest import bms, make_release

FLEET_EXIT = 8  # a fleet server error (docs/cli.md, "Exit codes")
USAGE_EXIT = 2


@dataclass(frozen=True)
class Served:
    url: str
    ca: Path
    token_files: dict[str, Path]
    tokens: dict[str, str]

    def run(self, role: str, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        common = ["--server", self.url, "--ca", str(self.ca)]
        return run_bmsfw(
            "fleet", *args, *common, "--token-file", str(self.token_files[role]), check=check
        )

    def json(self, role: str, *args: str) -> Any:
        return json.loads(self.run(role, *args, "--json").stdout)

    def client(self, role: str) -> FleetClient:
        return FleetClient(ClientConfig(self.url, self.tokens[role], ca_file=self.ca))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, pki: Any, root_pem: bytes) -> Iterator[Served]:
    with _served(tmp_path_factory, pki, root_pem) as s:
        yield s


@contextlib.contextmanager
def _served(
    tmp_path_factory: pytest.TempPathFactory, pki: Any, root_pem: bytes, **config: Any
) -> Iterator[Served]:
    """A server with two gateways, five devices, release 1 and its campaign on "north"."""
    tmp = tmp_path_factory.mktemp("fleet-cli")
    tls = write_test_ca_and_server(tmp, ca_name="bmsfw fleet cli test CA")
    db_url = f"sqlite:///{tmp / 'fleet.db'}"
    admin = init_database(db_url)
    assert admin is not None
    tokens = {"admin": admin}
    for role in ("viewer", "operator", "release_manager"):
        tokens[role] = str(create_token(db_url, role=role, name=f"cli-{role}")["token"])
    files = {}
    for role, token in tokens.items():
        files[role] = tmp / f"{role}.token"
        files[role].write_text(token + "\n")
        files[role].chmod(0o600)
    server = ServerConfig(
        db_url=db_url,
        trust_root_pem=root_pem,
        tick_interval_s=0,
        check_ins_per_s=0,
        migrate=False,
        **config,
    )
    with serve_https(create_app(server), tls, "fleet-cli") as url:
        s = Served(url, tls.ca, files, tokens)
        with s.client("admin") as c:
            gateways = {
                name: c.post("gateways", {"name": name, "site": site, "tags": []})["token"]
                for name, site in (("gw-north", "north"), ("gw-south", "south"))
            }
        for name, serials in (("gw-north", ["N1", "N2", "N3"]), ("gw-south", ["S1", "S2"])):
            with FleetClient(ClientConfig(url, gateways[name], ca_file=tls.ca)) as gw:
                gw.post("agent/check-in", {"devices": [bms(x) for x in serials]})
        with s.client("release_manager") as c:
            c.upload_release(make_release(pki), "r.bmsfw")
        with s.client("operator") as c:
            c.post(
                "campaigns",
                {
                    "name": "north first",
                    "release_id": 1,
                    "phases": [{"name": "all", "percent": 100}],
                    "selector": {"sites": ["north"]},
                },
            )
        yield s


def test_list_commands_tables_and_json(served: Served) -> None:
    north = served.json("viewer", "devices", "--site", "north")
    assert [d["serial"] for d in north] == ["N1", "N2", "N3"]
    assert [d["serial"] for d in served.json("viewer", "devices", "--online")] == [
        "N1", "N2", "N3", "S1", "S2",
    ]  # fmt: skip
    assert served.json("viewer", "devices", "--flagged") == []
    table = served.run("viewer", "devices", "--site", "south").stdout
    assert "serial" in table and "S1" in table and "gw-south" in table and "N1" not in table
    assert [r["version"] for r in served.json("viewer", "releases")] == ["1.1.0"]
    assert {g["name"] for g in served.json("viewer", "gateways")} == {"gw-north", "gw-south"}
    (campaign,) = served.json("viewer", "campaigns")
    assert campaign["name"] == "north first" and campaign["targets"] == 3
    assert "0 ok, 0 failed / 3" in served.run("viewer", "campaigns").stdout
    assert served.json("viewer", "flags") == []
    actions = {e["action"] for e in served.json("admin", "audit", "--all")}
    assert {"gateway.create", "release.upload", "campaign.create"} <= actions
    devices = served.json("viewer", "campaign", "1", "devices")
    assert {(d["device_serial"], d["state"]) for d in devices} == {
        ("N1", "pending"), ("N2", "pending"), ("N3", "pending"),
    }  # fmt: skip


def test_paging_from_the_command_line(served: Served) -> None:
    first = served.run("viewer", "devices", "--limit", "2", "--json")
    assert [d["serial"] for d in json.loads(first.stdout)] == ["N1", "N2"]
    cursor = first.stderr.split("--cursor ")[1].split()[0]
    rest = served.json("viewer", "devices", "--limit", "2", "--cursor", cursor)
    assert [d["serial"] for d in rest] == ["N3", "S1"]
    every = served.json("viewer", "devices", "--limit", "2", "--all")
    assert [d["serial"] for d in every] == ["N1", "N2", "N3", "S1", "S2"]
    bad = served.run("viewer", "devices", "--cursor", "bm90LW91cnM", check=FLEET_EXIT)
    assert "BMSFW-E642" in bad.stderr and "--cursor" in bad.stderr


def test_token_from_the_environment_and_refusals(served: Served) -> None:
    common = ["--server", served.url, "--ca", str(served.ca)]
    env = {"BMSFW_FLEET_TOKEN_FILE": str(served.token_files["viewer"])}
    ok = run_bmsfw("fleet", "gateways", *common, "--json", env_extra=env, check=0)
    assert len(json.loads(ok.stdout)) == 2
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BMSFW_FLEET_TOKEN")}
    missing = subprocess.run(
        [*_bmsfw(), "fleet", "gateways", *common],
        capture_output=True, text=True, env=clean, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == USAGE_EXIT
    assert "--token-file" in missing.stderr and "BMSFW-E0" in missing.stderr
    on_line = run_bmsfw(
        "fleet", "gateways", *common, "--token", served.tokens["viewer"], "--json", check=0
    )
    assert "visible to other users" in on_line.stderr
    role = served.run("viewer", "audit", check=FLEET_EXIT)
    assert "BMSFW-E603" in role.stderr and "/api/v1" not in role.stderr.split("remedy:")[1]


def test_operator_actions(served: Served) -> None:
    with served.client("admin") as c:
        bob = c.post("tokens", {"name": "bob", "role": "viewer"})
    bob_file = served.token_files["viewer"].with_name("bob.token")
    bob_file.write_text(bob["token"])
    bob_file.chmod(0o600)
    served.token_files["bob"] = bob_file
    assert served.json("bob", "gateways")
    refused = served.run("operator", "token", "revoke", str(bob["id"]), check=FLEET_EXIT)
    assert "BMSFW-E603" in refused.stderr
    assert served.json("bob", "gateways")  # still valid
    assert served.json("admin", "token", "revoke", str(bob["id"]))["revoked_at"]
    assert "BMSFW-E602" in served.run("bob", "gateways", check=FLEET_EXIT).stderr

    windows = served.json(
        "operator", "site", "windows", "north",
        "--window", "5,6 01:00-05:00", "--window", "22:00-23:30",
        "--timezone", "Europe/Amsterdam",
    )  # fmt: skip
    assert windows["windows"] == [
        {"days": [5, 6], "start": "01:00", "end": "05:00"},
        {"days": [0, 1, 2, 3, 4, 5, 6], "start": "22:00", "end": "23:30"},
    ]
    assert served.run("operator", "site", "windows", "x", "--window", "25h", check=USAGE_EXIT)

    pull = served.run("viewer", "release", "deactivate", "1", check=FLEET_EXIT)
    assert "BMSFW-E603" in pull.stderr
    out = served.run("release_manager", "release", "deactivate", "1", "--reason", "bad").stdout
    assert "release 1 (bms-app 1.1.0) deactivated at" in out
    assert served.json("viewer", "campaigns")[0]["status"] == "cancelled"

    busy = served.json("admin", "gateway", "decommission", "gw-south", "--reason", "replaced")
    assert busy["decommissioned_at"] and busy["devices"] == 2
    again = served.json("admin", "gateway", "remove", "gw-south")  # the same command
    assert again["decommissioned_at"] == busy["decommissioned_at"]
    moved = served.json("operator", "device", "move", "S1", "--gateway", "gw-north")
    assert moved["gateway"] == "gw-north"
    back = served.run("operator", "device", "move", "S1", "--gateway", "gw-south", check=8)
    assert "BMSFW-E644" in back.stderr and "bmsfw fleet" in back.stderr
    gone = served.json("operator", "device", "decommission", "S2")
    assert gone["decommissioned_at"]
    assert [d["serial"] for d in served.json("viewer", "devices", "--site", "south")] == ["S2"]


def test_four_eyes_from_the_command_line(
    tmp_path_factory: pytest.TempPathFactory, pki: Any, root_pem: bytes
) -> None:
    with _served(tmp_path_factory, pki, root_pem, four_eyes=True) as served:
        asked = served.run(
            "release_manager", "release", "deactivate", "1", "--running", "finish",
            "--reason", "bad",
        ).stdout  # fmt: skip
        asked = " ".join(asked.split())  # the terminal width may wrap it
        assert "waiting for approval: request 1 (deactivate release 1" in asked
        assert "`bmsfw fleet approve 1`" in asked
        table = served.run("viewer", "approvals").stdout
        assert "release.deactivate" in table and "release_manager" in table
        own = served.run("release_manager", "approve", "1", check=FLEET_EXIT)
        assert "BMSFW-E650" in own.stderr
        with served.client("viewer") as c:
            (waiting,) = c.get("approvals")
            assert waiting["running"] == "finish"
            assert c.get("releases")[0]["deactivated_at"] is None
        done = " ".join(served.run("admin", "approve", "1").stdout.split())
        assert "request 1 approved by operator:admin: deactivate release 1" in done
        with served.client("admin") as c:
            assert c.get("releases")[0]["deactivated_at"]
            assert c.get("campaigns")[0]["status"] == "running"  # let finish
            c.post("tokens/2/revoke")  # waits: request 2
        (decided,) = served.json("viewer", "approvals", "--status", "approved")
        assert decided["decided_by"] == "operator:admin"
        withdrawn = " ".join(served.run("admin", "reject", "2", "--note", "x").stdout.split())
        assert "request 2 withdrawn by operator:admin" in withdrawn


def _bmsfw() -> list[str]:
    from cli_support import BMSFW

    return [BMSFW]


def test_a_dynamic_campaign_from_the_command_line(served: Served, pki: Any) -> None:
    """`campaign-create --dynamic` for a site with no packs yet (one CLI run: they are
    slow); the first pack installed there joins its last phase."""
    with served.client("admin") as c:
        east = c.post("gateways", {"name": "gw-east", "site": "east", "tags": []})["token"]
    with served.client("release_manager") as c:
        release = c.upload_release(make_release(pki, "1.4.2"), "r-1.4.2.bmsfw")
    out = served.run(
        "operator", "campaign-create", "--name", "east packs", "--release", str(release["id"]),
        "--phases", "canary:2,100%", "--site", "east", "--dynamic",
    ).stdout  # fmt: skip
    shown = re.search(
        r"campaign (\d+) 'east packs': running \(dynamic\), phase 2/2 .* 0 devices", out
    )
    assert shown, out
    with FleetClient(ClientConfig(served.url, east, ca_file=served.ca)) as gw:
        gw.post("agent/check-in", {"devices": [bms("E1")]})
    with served.client("viewer") as c:
        devices = c.get(f"campaigns/{shown.group(1)}/devices")
    assert [(d["device_serial"], d["phase"], d["state"]) for d in devices] == [("E1", 1, "offered")]
    listed = {c["name"]: c["dynamic"] for c in served.json("viewer", "campaigns")}
    assert listed["east packs"] is True and not any(
        v for k, v in listed.items() if k != "east packs"
    )


def test_a_downgrade_campaign_from_the_command_line(served: Served, pki: Any) -> None:
    """`campaign-create --downgrade REASON`: packs on a higher version are targets, the
    campaign waits for a release manager (`campaign ID approve`), and its offers carry
    the reason; a blank reason is a usage error that creates nothing."""
    with served.client("admin") as c:
        delta = c.post("gateways", {"name": "gw-delta", "site": "delta", "tags": []})["token"]
    with served.client("release_manager") as c:
        release = c.upload_release(make_release(pki, "1.3.9"), "r-1.3.9.bmsfw")["id"]
    with FleetClient(ClientConfig(served.url, delta, ca_file=served.ca)) as gw:
        gw.post("agent/check-in", {"devices": [bms("D1", version="1.4.0")]})
        common = ["campaign-create", "--name", "back", "--release", str(release), "--site", "delta"]
        before = served.json("viewer", "campaigns")
        blank = served.run("operator", *common, "--downgrade", "  ", check=USAGE_EXIT)
        assert "--downgrade needs a reason" in blank.stderr
        assert served.json("viewer", "campaigns") == before
        out = served.run("operator", *common, "--downgrade", "1.4.0 drains cells").stdout
        shown = re.search(r"campaign (\d+) 'back': needs_approval, .* 1 devices", out)
        assert shown and "downgrade campaign: 1.4.0 drains cells" in out, out
        served.run("release_manager", "campaign", shown.group(1), "approve")
        (offer,) = gw.post("agent/check-in", {"devices": [bms("D1", version="1.4.0")]})["offers"]
    assert (offer["version"], offer["downgrade"]["reason"]) == ("1.3.9", "1.4.0 drains cells")


def test_a_devices_history_from_the_command_line(served: Served, pki: Any) -> None:
    """`bmsfw fleet device SERIAL`: identity, current version, open flags, last
    telemetry, and each run in a campaign with its outcome and error code (from the
    update report the agent sent), newest first, paged like every list; and a
    decommissioned device that checked in again, in `bmsfw fleet flags`."""
    with served.client("admin") as c:
        west = c.post("gateways", {"name": "gw-west", "site": "west", "tags": []})["token"]
    with served.client("release_manager") as c:
        release = c.upload_release(make_release(pki, "1.4.3"), "r-1.4.3.bmsfw")["id"]
    pack = bms("W1", soc_pct=41.5, temperature_c=19.0, integrity_ok=False)
    with FleetClient(ClientConfig(served.url, west, ca_file=served.ca)) as gw:
        gw.post("agent/check-in", {"devices": [bms("W1"), bms("W2")]})
        with served.client("operator") as c:
            c.post("devices/W2/decommission", {"reason": "scrapped"})
        # W1 flagged for an integrity fault, W2 for checking in after its decommissioning.
        gw.post("agent/check-in", {"devices": [pack, bms("W2")]})
        campaigns = []
        for name in ("west one", "west two"):
            with served.client("operator") as c:
                body = {"name": name, "release_id": release, "selector": {"serials": ["W1"]},
                        "phases": [{"name": "all", "percent": 100}]}  # fmt: skip
                campaigns.append(c.post("campaigns", body)["id"])
            if name == "west one":
                gw.post("agent/check-in", {"devices": [pack]})
                for state in ("downloading", "failed"):
                    report = {"device_serial": "W1", "campaign_id": campaigns[0], "state": state}
                    if state == "failed":
                        report |= {
                            "error_code": "BMSFW-E401",
                            "update": {"outcome": "refused", "failed_step": "preflight",
                                       "error_code": "BMSFW-E401",
                                       "error_message": "state of charge 12 % below 20 %"},
                        }  # fmt: skip
                    gw.post("agent/reports", report)

    # Two CLI runs (each is a process): the first page as JSON, the next as a table.
    first = served.run("viewer", "device", "W1", "--limit", "1", "--json")
    shown = json.loads(first.stdout)
    device, (newest,) = shown["device"], shown["updates"]
    assert (device["serial"], device["gateway"], device["firmware_version"]) == (
        "W1",
        "gw-west",
        "1.0.0",
    )
    assert (device["soc_pct"], device["temperature_c"]) == (41.5, 19.0)
    assert device["flags"] == ["integrity_fault"]
    assert (newest["campaign_id"], newest["state"], newest["report"]) == (
        campaigns[1],
        "pending",
        None,
    )
    cursor = re.search(r"--cursor (\S+)", first.stderr)
    assert cursor, first.stderr
    rest = served.run("viewer", "device", "show", "W1", "--limit", "1", "--cursor", cursor[1])
    assert "integrity_fault" in rest.stdout and "41.5" in rest.stdout
    assert "west one" in rest.stdout and "west two" not in rest.stdout
    assert "failed" in rest.stdout and "refused" in rest.stdout
    assert "BMSFW-E401 at preflight: state of charge 12 % below 20 %" in rest.stdout
    flags = served.run("viewer", "flags").stdout
    assert re.search(r"W2 .*decommissioned_check_in", flags), flags
