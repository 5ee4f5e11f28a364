"""Options shared by every command that talks to a BMS: the link, trust, profile."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from bmsfw.errors import UsageError
from bmsfw.link.wire import FRAME_GAPS
from bmsfw.protocol.smp.link import (
    BlePasskeyFormatError,
    PasskeyProvider,
    parse_passkey,
    parse_telemetry_spec,
)
from bmsfw.update.connect import Connection, LinkSpec, open_sessions, parse_links

__all__ = [
    "BLE_PASSKEY_ENV",
    "UNIT_IDS",
    "ble_passkey_provider",
    "connect",
    "flatten_units",
    "frame_gap_option",
    "link_options",
    "links_from",
    "load_trust",
    "read_secret",
    "trust_options",
]

F = TypeVar("F", bound=Callable[..., Any])

#: The BMS's Bluetooth passkey, when not in a file or typed at the prompt.
BLE_PASSKEY_ENV = "BMSFW_BLE_PASSKEY"

#: ``--frame-gap``: the Modbus t3.5 of an RS485 line (both ends must agree, like the baud).
frame_gap_option = click.option(
    "--frame-gap",
    type=click.Choice(list(FRAME_GAPS)),
    default="spec",
    show_default=True,
    help="Modbus t3.5 between frames on RS485: 'spec' (1.75 ms above 19,200 baud, as the "
    "Modbus spec recommends) or 'chars' (3.5 character times at any baud; only for BMS "
    "that support it, see docs/modbus.md).",
)


class UnitIds(click.ParamType[tuple[int, ...], Any]):
    """``5``, ``1-8`` or ``1,3,5-7``: the units of an RS485 string, in the order given."""

    name = "N|N-M|N,M"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        units: list[int] = []
        for part in str(value).split(","):
            first, sep, last = part.strip().partition("-")
            try:
                lo = int(first)
                hi = int(last) if sep else lo
            except ValueError:
                self.fail(f"{value!r}: expected a unit id, a range 1-8 or a list 1,3,5", param, ctx)
            if hi < lo:
                self.fail(f"{part!r}: the range runs backwards", param, ctx)
            units.extend(range(lo, hi + 1))
        return tuple(units)


UNIT_IDS = UnitIds()


def flatten_units(values: Any) -> tuple[int, ...]:
    """``--unit 1-3 --unit 7`` -> (1, 2, 3, 7)."""
    out: list[int] = []
    for value in values or ():
        out.extend(value if isinstance(value, tuple) else (int(value),))
    return tuple(out)


def link_options(func: F) -> F:
    """--can IF:CH --node N… | --serial PORT --unit N… --baud B [--frame-gap G] |
    --smp LINK, plus --bitrate/--timeout."""
    options = [
        click.option(
            "--can",
            metavar="INTERFACE:CHANNEL",
            help="CAN link, e.g. udp_multicast:239.74.163.2 or socketcan:can0.",
        ),
        click.option(
            "--node", "nodes", type=int, multiple=True, help="BMS node id on CAN (repeatable)."
        ),
        click.option(
            "--bitrate",
            "bitrate_bps",
            type=int,
            default=500_000,
            show_default=True,
            help="CAN bitrate in bit/s.",
        ),
        click.option("--serial", metavar="PORT", help="RS485/USB serial port, e.g. /dev/ttyUSB0."),
        click.option(
            "--unit",
            "units",
            type=UNIT_IDS,
            multiple=True,
            help="Modbus unit id(s) on RS485: 5, a range 1-8 or a list 1,3,5 (repeatable).",
        ),
        click.option("--baud", type=int, default=115_200, show_default=True, help="Serial baud."),
        click.option(
            "--smp",
            metavar="LINK",
            help="MCUmgr SMP link to a Zephyr/MCUboot BMS: serial:/dev/ttyACM0, "
            "udp:192.0.2.5:1337 or ble:<address or name>[@HCI] (docs/smp.md).",
        ),
        click.option(
            "--ble-passkey-file",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            help=f"File holding the 6-digit passkey the BMS shows, for Bluetooth pairing "
            f"(or set {BLE_PASSKEY_ENV}; otherwise bmsfw asks on the terminal). Never give "
            "the passkey itself as an argument: other users see arguments in ps.",
        ),
        click.option(
            "--telemetry",
            "telemetry_spec",
            metavar="dbc:FILE@CANLINK|smp",
            default=None,
            help="Where an SMP BMS's preflight values come from: its CAN broadcast decoded "
            "with the vendor's DBC file (dbc:vendor.dbc@socketcan:can0), or smp (its vendor "
            "group, the default). Overrides the profile's [telemetry].",
        ),
        frame_gap_option,
        click.option(
            "--timeout",
            "timeout_s",
            type=float,
            default=None,
            help="Response timeout in seconds (default: 2 on CAN, 1 on RS485).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def ble_passkey_provider(path: Path | None) -> PasskeyProvider:
    """Where the Bluetooth passkey comes from: ``--ble-passkey-file``, ``BMSFW_BLE_PASSKEY``,
    or a hidden prompt on a terminal (asked only when the BMS pairs). A file or the
    environment is checked at once (E397 before anything is opened)."""
    if path is not None:
        value = parse_passkey(read_secret(path, "BLE passkey file"), where=str(path))
        return lambda: value
    if os.environ.get(BLE_PASSKEY_ENV):
        value = parse_passkey(os.environ[BLE_PASSKEY_ENV], where=BLE_PASSKEY_ENV)
        return lambda: value

    def prompt() -> int | None:
        if not sys.stdin.isatty():
            return None
        text = click.prompt("Bluetooth passkey the BMS shows (6 digits)", hide_input=True, err=True)
        try:
            return parse_passkey(str(text), where="the passkey typed")
        except BlePasskeyFormatError as exc:
            click.echo(f"{exc.code}: {exc}", err=True)
            return None  # the pairing fails: E313

    return prompt


def links_from(kwargs: dict[str, Any], profile: Any = None) -> list[LinkSpec]:
    """Pop the link options out of a command's kwargs and parse them. An SMP link's
    telemetry source: ``--telemetry``, else the profile's ``[telemetry]``."""
    telemetry_text = kwargs.pop("telemetry_spec")
    telemetry = getattr(profile, "telemetry", None)
    if telemetry_text is not None:
        telemetry = parse_telemetry_spec(telemetry_text)
    passkey_file = kwargs.pop("ble_passkey_file")
    smp = kwargs.get("smp")
    passkey = ble_passkey_provider(passkey_file) if smp and smp.startswith("ble:") else None
    return parse_links(
        can=kwargs.pop("can"),
        nodes=kwargs.pop("nodes"),
        bitrate_bps=kwargs.pop("bitrate_bps"),
        serial=kwargs.pop("serial"),
        units=flatten_units(kwargs.pop("units")),
        baud=kwargs.pop("baud"),
        timeout_s=kwargs.pop("timeout_s"),
        frame_gap=kwargs.pop("frame_gap"),
        smp=kwargs.pop("smp"),
        ble_passkey=passkey,
        telemetry=telemetry,
    )


def connect(kwargs: dict[str, Any], profile: Any = None) -> Connection:
    return open_sessions(links_from(kwargs, profile))


def trust_options(func: F) -> F:
    func = click.option(
        "--crl",
        "crl_paths",
        type=click.Path(path_type=Path, dir_okay=False),
        multiple=True,
        help="Extra revocation list (PEM/DER), repeatable.",
    )(func)
    return click.option(
        "--trust",
        "trust_path",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="BMSFW_TRUST",
        required=True,
        help="Vendor root certificate (PEM/DER) the package must chain to [env BMSFW_TRUST].",
    )(func)


def load_trust(trust_path: Path, crl_paths: tuple[Path, ...] = ()) -> Any:
    from bmsfw.package import TrustAnchors

    try:
        trust = TrustAnchors.from_root_certificate(trust_path.read_bytes())
        for crl in crl_paths:
            trust = trust.with_revocation_list(crl.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    return trust


def read_secret(path: Path, what: str) -> str:
    """A token kept in a file (one line of text); a usage error if it cannot be read,
    is not UTF-8 text, or is empty."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path} is not a text file (byte {exc.start})") from exc
    if not value:
        raise UsageError(f"{what} {path} is empty")
    return value
