"""Power-cut campaign through the CLI: kill the virtual BMS process at random times over
the whole `bmsfw update` (staging, transfer, verify, activation, test boot, self-test,
confirm), on CAN and on RS485, then power on and run the same command again.

Counts: bricked (no application after power-on), retries that finished (confirmed,
or already installed), retries that sent image bytes the BMS already held as its new
image. The cut times are spread over the length of an uninterrupted update measured
first on the same link (one uniform draw per equal slice, seeded).

Run: ``.venv/bin/python -m benchmarks.power_cut_cli [--cuts=N] [--seed=S] [--link=can|rs485]``
(default 16 cuts per link, both links).
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from power_cut_support import (
    CutResult,
    Link,
    Site,
    make_power_cut_kit,
    random_cut_times,
)


def _clean_run_s(site: Site) -> float:
    """Length of an uninterrupted update on this link (the cut lands after the confirm)."""
    started = time.monotonic()
    result = site.cut(3600.0)
    if not result.finished:
        raise SystemExit(f"an uninterrupted update failed on {site.link}: {result}")
    return time.monotonic() - started


def main(argv: list[str]) -> int:
    args = dict(a.removeprefix("--").split("=", 1) for a in argv if "=" in a)
    cuts = int(args.get("cuts", 16))
    rng = random.Random(int(args.get("seed", 12)))
    links: tuple[Link, ...] = (args["link"],) if "link" in args else ("can", "rs485")  # type: ignore[assignment]
    results: list[CutResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        kit = make_power_cut_kit(Path(tmp) / "kit")
        for link in links:
            work = Path(tmp) / link
            work.mkdir()
            site = Site(kit, work, link)
            # the first run alone (no retry) is about half of cut(): measure the update
            span = _clean_run_s(site) / 2
            print(f"{link}: uninterrupted update + retry {2 * span:.1f} s; cuts in 0..{span:.1f} s")
            for n, at in enumerate(random_cut_times(rng, cuts, span), start=1):
                result = site.cut(at)
                results.append(result)
                print(
                    f"{link:<5} {n:>2} cut {result.cut_at_s:>5.2f} s  first {result.first_exit} "
                    f"{result.first_error:<12} after cut {result.after_cut:<26} "
                    f"retry {result.retry_exit} {result.retry_outcome:<17} "
                    f"start {result.retry_start:<19} resumed {result.resumed_from:>6} "
                    f"sent {result.bytes_sent:>6}",
                    flush=True,
                )
    bricked = sum(r.bricked for r in results)
    finished = sum(r.finished for r in results)
    resent = sum(r.resent_held for r in results)
    print(
        f"\n{len(results)} cuts ({', '.join(links)}): {bricked} bricked, "
        f"{finished} retries finished, {len(results) - finished} did not, "
        f"{resent} retries re-sent an image the BMS held; "
        f"{sum(r.resumed_from > 0 for r in results)} transfers resumed mid-way, "
        f"{sum(r.retry_start == 'continue-test-image' for r in results)} test images continued"
    )
    return 0 if bricked == 0 and finished == len(results) and resent == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
