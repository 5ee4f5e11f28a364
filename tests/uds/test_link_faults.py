"""Link faults: a lossy link still completes; the retries and resume are what carry it."""

from __future__ import annotations

from pathlib import Path

from bmsfw.link import IsoTpParams
from bmsfw.link.wirebus import CanFaults
from bmsfw.package import VendorPki
from bmsfw.protocol.errors import UdsTimeoutError
from bmsfw.protocol.session import TesterCredentials as Credentials
from bmsfw.protocol.uds import UdsClientConfig, open_uds_session
from bmsfw.sim.sim_can import CanSimConfig, CanSimulator

from .conftest import make_release


def test_two_percent_of_frames_dropped_still_completes(
    state_dir: Path, tester: Credentials, pki: VendorPki
) -> None:
    release_v2 = make_release(pki, "1.1.0", 2, size=16 * 1024)  # lossy links are slow
    # short timeouts keep the test fast: every lost frame costs one P2 / N_Bs wait
    config = UdsClientConfig(p2_min_s=0.1, request_retries=4)
    isotp = IsoTpParams(
        block_size=0, rx_flowcontrol_timeout_s=0.15, rx_consecutive_frame_timeout_s=0.15
    )
    with (
        CanSimulator(
            CanSimConfig("virtual:lossy", (1,), str(state_dir), time_scale=20, isotp_timeout_s=0.15)
        ),
        open_uds_session("virtual:lossy", 1, config=config, isotp=isotp) as session,
    ):
        session.authenticate(tester)
        session.prepare(release_v2.header)
        session.erase()
        lossy = CanFaults(drop_fraction=0.02, direction="both", seed=7)
        session.bus.faults = lossy
        offsets: list[int] = []
        result_offset = 0
        for _attempt in range(60):  # the device keeps every acknowledged byte
            try:
                for offset in session.write(release_v2.image, start_offset=result_offset):
                    offsets.append(offset)
                break
            except UdsTimeoutError:  # interrupted after the block's one retry: resume
                result_offset = session.read_transfer_state().contiguous_bytes
        stats = session.bus.stats()
        session.bus.faults = CanFaults()
        session.verify()  # every byte arrived intact despite the losses
        assert stats.dropped > 0
        assert offsets[-1] == len(release_v2.image)
