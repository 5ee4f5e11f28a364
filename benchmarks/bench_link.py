"""Raw ISO-TP throughput over the bmsfw link layer: ``python -m benchmarks.bench_link``.

A tester sends 4095-byte ISO-TP messages (the size of a UDS TransferData block)
to a receiver that answers each with a 2-byte acknowledgement, like a flash
loop without the UDS overhead. Over ``virtual`` (one process) and
``udp_multicast`` (receiver in a spawned process), throttled to the physical
rate and unthrottled, classic CAN and CAN FD, several block sizes.

Columns: frames on the bus (both directions), wire time (nominal bits, the
busy time of the bus), elapsed wall time, payload rate, and that rate as a
percentage of the link's raw data rate (classic: 8 data bytes per 111-bit
frame; FD: 64 bytes per 29 nominal + 543 data-phase bits). Unthrottled rows
have no physical limit; their percentage shows how far above the real bus the
Python stack runs (or, below 100 %, that it cannot keep up).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import can

from bmsfw.link import (
    IsoTpTimeoutError,
    default_isotp_params,
    isotp_recv,
    isotp_send,
    make_isotp_stack,
    node_address,
    open_can_bus,
    parse_can_link,
)
from bmsfw.sim.lab import unique_multicast_link

MESSAGE_BYTES = 4095


@dataclass(frozen=True)
class Case:
    link: str
    block_size: int
    total_bytes: int


def _receiver(link: str, block_size: int, ready: Any, stop: Any) -> None:
    spec = parse_can_link(link)
    bus = open_can_bus(spec)
    notifier = can.Notifier(bus, [], timeout=0.05)
    address = node_address(1)
    stack = make_isotp_stack(
        bus,
        notifier,
        txid=address.response_id,
        rxid=address.request_id,
        params=default_isotp_params(spec, block_size=block_size),
    )
    stack.start()
    ready.set()
    try:
        while not stop.is_set():
            with contextlib.suppress(IsoTpTimeoutError):
                data = isotp_recv(stack, timeout_s=0.2)
                isotp_send(stack, b"\x76" + bytes([len(data) & 0xFF]))
    finally:
        stack.stop()
        notifier.stop()
        bus.shutdown()


def run_case(case: Case) -> dict[str, float | str]:
    spec = parse_can_link(case.link)
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    child = None
    if spec.is_multicast:
        child = context.Process(
            target=_receiver, args=(case.link, case.block_size, ready, stop), daemon=True
        )
        child.start()
        ready.wait(30)
        thread = None
    else:
        thread = threading.Thread(
            target=_receiver, args=(case.link, case.block_size, ready, stop), daemon=True
        )
        thread.start()
        ready.wait(10)
    bus = open_can_bus(spec)
    notifier = can.Notifier(bus, [], timeout=0.05)
    address = node_address(1)
    stack = make_isotp_stack(
        bus,
        notifier,
        txid=address.request_id,
        rxid=address.response_id,
        params=default_isotp_params(spec, block_size=case.block_size),
    )
    stack.start()
    payload = os.urandom(MESSAGE_BYTES)
    messages = max(1, case.total_bytes // MESSAGE_BYTES)
    failures = 0
    try:
        time.sleep(0.1)
        bus.reset_stats()
        started = time.perf_counter()
        for _ in range(messages):
            isotp_send(stack, payload, timeout_s=20)
            try:
                isotp_recv(stack, timeout_s=5)
            except IsoTpTimeoutError:
                failures += 1
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        stack.stop()
        notifier.stop()
        bus.shutdown()
        if child is not None:
            child.join(5)
            if child.is_alive():
                child.kill()
        if thread is not None:
            thread.join(5)
    stats = bus.stats()
    model = spec.wire_model
    raw_bytes_s = model.raw_payload_rate_bytes_per_s(fd=spec.fd)
    payload_bytes_s = messages * MESSAGE_BYTES / elapsed
    return {
        "link": case.link,
        "bs": str(case.block_size),
        "frames": stats.frames_tx + stats.frames_rx,
        "wire_s": stats.wire_time_tx_s + stats.wire_time_rx_s,
        "elapsed_s": elapsed,
        "kib_s": payload_bytes_s / 1024,
        "raw_kib_s": raw_bytes_s / 1024,
        "pct": 100 * payload_bytes_s / raw_bytes_s,
        "lost": failures,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kib", type=int, default=128, help="payload per case (KiB)")
    parser.add_argument("--quick", action="store_true", help="32 KiB per case")
    args = parser.parse_args(argv)
    total = (32 if args.quick else args.kib) * 1024
    cases = [
        Case("virtual:bench@500k", 0, total),
        Case("virtual:bench@500k", 8, total),
        Case("virtual:bench@500k,throttle", 0, total),
        Case("virtual:bench@500k,throttle", 8, total),
        Case("virtual:bench@1M,throttle", 0, total),
        Case("virtual:bench@500k/2M", 0, total),
        Case("virtual:bench@500k/2M,throttle", 0, total),
        Case("virtual:bench@500k/2M,throttle", 8, total),
        # each multicast case on its own group and port: no stray frames from the last one
        Case(unique_multicast_link("@500k"), 8, total),
        Case(unique_multicast_link("@500k"), 16, total),
        Case(unique_multicast_link("@500k,throttle"), 0, total),
        Case(unique_multicast_link("@500k/2M,throttle"), 0, total),
    ]
    header = (
        f"{'link':<46} {'bs':>3} {'frames':>7} {'wire s':>7} {'elapsed s':>9} "
        f"{'KiB/s':>8} {'raw KiB/s':>9} {'% raw':>7} {'lost':>4}"
    )
    print(f"ISO-TP, {MESSAGE_BYTES}-byte messages, {total // 1024} KiB per case")
    print(header)
    print("-" * len(header))
    for case in cases:
        row = run_case(case)
        link = re.sub(r",port=\d+", "", str(row["link"]))
        print(
            f"{link:<46} {row['bs']:>3} {row['frames']:>7} {row['wire_s']:>7.2f} "
            f"{row['elapsed_s']:>9.2f} {row['kib_s']:>8.1f} {row['raw_kib_s']:>9.1f} "
            f"{row['pct']:>6.1f}% {row['lost']:>4}",
            flush=True,
        )


if __name__ == "__main__":
    main()
