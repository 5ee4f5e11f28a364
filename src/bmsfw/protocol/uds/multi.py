"""The UDS flash sequence for one node, and for several nodes on one bus concurrently.

This is the CAN path's own sequence (docs/uds.md, "Flash sequence"), used by
``bmsfw sim``-based demos, the benchmark and tests; the transport-independent
update pipeline (preflight, backup, report) drives the same ``BmsSession`` steps.
Several nodes: one physical session per node, each in its own thread; the
shared bus bandwidth is the limit, and the result lists every node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bmsfw.errors import BmsfwError
from bmsfw.protocol.errors import (
    DeviceRolledBackError,
    DeviceSelfTestFailedError,
    UdsTransferInterruptedError,
)
from bmsfw.protocol.session import TesterCredentials
from bmsfw.protocol.uds.client import UdsSession

__all__ = ["NodeResult", "flash_node", "flash_nodes"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, int], None]  # (node, offset, total)


@dataclass(frozen=True)
class NodeResult:
    node: int
    ok: bool
    old_version: str = ""
    new_version: str = ""
    resumed_from: int = 0
    bytes_sent: int = 0
    duration_s: float = 0.0
    error: BmsfwError | None = None

    def summary(self) -> str:
        if self.ok:
            return (
                f"node {self.node}: {self.old_version} -> {self.new_version}, "
                f"{self.bytes_sent} bytes in {self.duration_s:.1f} s"
            )
        return f"node {self.node}: FAILED {self.error}"


def flash_node(
    session: UdsSession,
    header: bytes,
    image: bytes,
    credentials: TesterCredentials,
    *,
    node: int = 0,
    progress: Progress | None = None,
    boot_timeout_s: float = 30.0,
    max_resumes: int = 0,
) -> NodeResult:
    """Authenticate, stage, erase or resume, transfer, verify, activate, reset, confirm.

    Raises the step's ``BmsfwError``; the device keeps what it received, so calling
    this again resumes the transfer. ``max_resumes`` > 0 resumes an interrupted
    transfer within this call (smaller blocks each time), for lossy links.
    """
    start = time.monotonic()
    old = session.identify().app_version
    session.authenticate(credentials)
    state = session.prepare(header)
    component = session.staged_component
    # the decoded image, or the stored bytes of a component stored encoded
    sizes = {state.total_size}
    if component is not None:
        sizes |= {component.image_size, component.stored_size}
    if state.total_size and len(image) not in sizes:
        from bmsfw.errors import UsageError

        raise UsageError(f"image has {len(image)} bytes, the release header says {sorted(sizes)}")
    # the device reports what it holds of *this* stream (an encoded one holds 0)
    resume = min(state.contiguous_bytes, len(image)) if state.total_size == len(image) else 0
    if resume == 0:
        session.erase()
    sent = 0
    offset = resume
    while offset < len(image):
        log.info("node %s: transfer from byte %d of %d", node, offset, len(image))
        try:
            for reached in session.write(image, start_offset=offset):
                sent += reached - offset
                offset = reached
                if progress is not None:
                    progress(node, offset, len(image))
        except UdsTransferInterruptedError:
            if max_resumes <= 0:
                raise
            max_resumes -= 1
            # ask the device what it holds; it keeps every byte it acknowledged
            held = session.read_transfer_state()
            offset = held.contiguous_bytes if held.total_size == len(image) else 0
            log.info("node %s: transfer interrupted; resuming at %d", node, offset)
            if offset == 0:
                session.erase()  # an encoded stream starts again on an erased bank
    session.verify()
    session.activate()
    session.reset()
    status = session.wait_boot(boot_timeout_s)
    if status.image_state == "reverted":
        raise DeviceRolledBackError(
            f"node {node} reverted after reset: {status.last_revert_reason or 'no reason given'}"
        )
    result = session.read_self_test()
    if not result.passed:
        failed = ", ".join(c.name for c in result.checks if not c.passed)
        session.rollback()
        raise DeviceSelfTestFailedError(f"node {node}: self-test failed ({failed}); rolled back")
    session.confirm()
    new = session.identify().app_version
    return NodeResult(
        node=node,
        ok=True,
        old_version=old,
        new_version=new,
        resumed_from=resume,
        bytes_sent=sent,
        duration_s=time.monotonic() - start,
    )


def flash_nodes(
    open_session: Callable[[int], UdsSession],
    nodes: Sequence[int],
    header: bytes,
    image: bytes,
    credentials: TesterCredentials,
    *,
    progress: Progress | None = None,
    boot_timeout_s: float = 30.0,
) -> list[NodeResult]:
    """Flash every node concurrently (one session and thread each); never raises per node."""
    results: dict[int, NodeResult] = {}
    lock = threading.Lock()

    def run(node: int) -> None:
        start = time.monotonic()
        try:
            session = open_session(node)
        except BmsfwError as exc:
            with lock:
                results[node] = NodeResult(node, False, error=exc)
            return
        try:
            result = flash_node(
                session,
                header,
                image,
                credentials,
                node=node,
                progress=progress,
                boot_timeout_s=boot_timeout_s,
            )
        except BmsfwError as exc:
            log.warning("node %s failed: %s", node, exc)
            result = NodeResult(node, False, duration_s=time.monotonic() - start, error=exc)
        finally:
            session.close()
        with lock:
            results[node] = result

    threads = [threading.Thread(target=run, args=(n,), name=f"flash-node{n}") for n in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [results[n] for n in nodes]
