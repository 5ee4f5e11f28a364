"""What the person on site is told before and after an update (UN R156 asks for both).

Before: what will happen, in order, and how long each pack will be out of
service — the transfer goes into the inactive bank while the pack keeps
working; the pack is out of service from the reset (contactors open) until its
self-test passes (contactors close), bounded by the profile's boot timeout, and
by the revert timeout on top when the new firmware fails and the BMS returns to
the previous one. After: what happened, and how long the pack actually was out
of service, from the report's step timings.

Pure: built from the package's manifest, the link's rate and the profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from bmsfw.link.uart import SerialParams
from bmsfw.link.wire import CanWireModel
from bmsfw.package import Manifest
from bmsfw.update.profile import UpdateProfile
from bmsfw.update.report import UpdateReport

__all__ = ["UpdateNotice", "after_text", "notice_for_links", "out_of_service_s", "plan_notice"]

# The steps during which the pack is out of service: the reset opens the contactors,
# the self-test's pass closes them again (a confirm follows at once).
_OUT_OF_SERVICE_STEPS = ("activate", "self-test")


@dataclass(frozen=True)
class UpdateNotice:
    product: str
    version: str
    security_counter: int
    safety_class: str
    packs: int
    one_after_another: bool
    link: str
    transfer_bytes: int
    transfer_min_s: float  # at the link's raw rate: the transfer takes at least this long
    out_of_service_max_s: float  # reset until self-test passed, at most (boot timeout)
    fallback_extra_s: float  # more when the new firmware fails and the BMS falls back

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        packs = f"{self.packs} BMS" if self.packs > 1 else "1 BMS"
        order = (
            "one after another: only one pack is out of service at a time"
            if self.one_after_another
            else "at the same time"
        )
        lines = [
            "What will happen (before the update):",
            f"  install {self.product} {self.version} (security counter "
            f"{self.security_counter}, {self.safety_class}) on {packs} over {self.link}"
            + (f", {order}" if self.packs > 1 else ""),
            "  1. checks: package, state of charge, temperature, supply, link; "
            "nothing is written if one fails",
            "  2. the configuration is backed up and read back",
            f"  3. {self.transfer_bytes} bytes go into the inactive bank; the pack stays in "
            f"service (at least {self.transfer_min_s:.1f} s at the link's raw rate)",
            "  4. reset: the BMS opens its contactors - the pack is OUT OF SERVICE - boots "
            "the new firmware and runs its self-test",
            "  5. self-test passed: the contactors close and the new firmware is confirmed; "
            "failed: the BMS returns to its previous firmware by itself",
            f"  Out of service per pack: from the reset until the self-test passes, at most "
            f"{self.out_of_service_max_s:g} s; at most {self.worst_case_s:g} s if it falls back.",
        ]
        return "\n".join(lines) + "\n"

    @property
    def worst_case_s(self) -> float:
        return self.out_of_service_max_s + self.fallback_extra_s


def _link_rate(kind: Literal["can", "serial"], rate: int, parity: str = "E") -> tuple[str, float]:
    if kind == "can":
        return f"CAN {rate // 1000} kbit/s", CanWireModel(rate).raw_payload_rate_bytes_per_s()
    params = SerialParams(baud_bps=rate, parity=parity)
    return f"RS485 {params}", params.raw_char_rate_per_s


def plan_notice(
    manifest: Manifest,
    profile: UpdateProfile,
    *,
    link: Literal["can", "serial"],
    rate: int,
    packs: int,
    one_after_another: bool,
    component: str = "app",
    parity: str = "E",
) -> UpdateNotice:
    """The notice for installing ``manifest`` on ``packs`` BMS over a link at ``rate``."""
    names = [c.name for c in manifest.components]
    chosen = manifest.component(component if component in names else names[0])
    link_text, bytes_per_s = _link_rate(link, rate, parity)
    return UpdateNotice(
        product=manifest.product,
        version=manifest.version,
        security_counter=manifest.security_counter,
        safety_class=manifest.safety_class,
        packs=packs,
        one_after_another=one_after_another,
        link=link_text,
        transfer_bytes=chosen.stored_size,
        transfer_min_s=chosen.stored_size / bytes_per_s,
        out_of_service_max_s=profile.boot.boot_timeout_s,
        fallback_extra_s=profile.boot.revert_timeout_s,
    )


def notice_for_links(
    package: bytes,
    links: Sequence[Any],
    profile: UpdateProfile,
    *,
    broadcast: bool = False,
    delta: bool = False,
) -> UpdateNotice | None:
    """The notice for installing ``package`` over ``links`` (LinkSpecs, one per BMS), or
    None when there is none to give: a package that does not even parse (the update
    refuses it with its own code), or SMP over UDP/BLE (no wire-rate model)."""
    from bmsfw.errors import BmsfwError
    from bmsfw.package import inspect_release
    from bmsfw.update.connect import CanLink, SerialLink, SmpLink

    try:
        manifest = inspect_release(package).manifest
    except BmsfwError:
        return None
    first = links[0]
    if isinstance(first, SmpLink) and first.kind != "serial":
        return None
    on_serial = isinstance(first, SerialLink | SmpLink)
    return plan_notice(
        manifest,
        profile,
        link="serial" if on_serial else "can",
        rate=first.bitrate_bps if isinstance(first, CanLink) else first.baud,
        parity=first.parity if isinstance(first, SerialLink) else "N" if on_serial else "E",
        packs=len(links),
        one_after_another=(on_serial and not broadcast) or (delta and isinstance(first, CanLink)),
    )


def out_of_service_s(report: UpdateReport) -> float | None:
    """How long the pack was out of service (reset to self-test end); None if never reset."""
    steps = [s for s in report.steps if s.step in _OUT_OF_SERVICE_STEPS]
    if not any(s.step == "activate" for s in steps):
        return None
    return sum(s.duration_s for s in steps)


def after_text(report: UpdateReport) -> str:
    """One line for the person on site after the update: what happened, how long down."""
    down = out_of_service_s(report)
    outage = (
        "the pack was not taken out of service"
        if down is None
        else f"the pack was out of service for {down:.1f} s (reset to self-test end)"
    )
    done = {
        "updated": f"runs {report.running_version}, confirmed",
        "already-installed": f"already ran {report.running_version}; nothing written",
        "rolled-back": f"the new firmware failed; it runs {report.running_version} again",
        "paused": f"stopped at a safe point; it runs {report.running_version}; run again to resume",
        "refused": f"nothing written; it runs {report.running_version}",
        "failed": f"FAILED; it runs {report.running_version or 'unknown'}",
    }.get(report.outcome, report.outcome)
    who = report.serial or report.node
    return f"After the update: {who}: {done}; {outage}.\n"
