"""Random register and config-space accesses of every width over the whole 0x1000 virtio-mmio
window, interleaved with a legitimate Linux probe: nothing escapes, the loop survives."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pyvmm.virtio import constants as C

from hostile_rig import SndRig

SIZES = st.sampled_from([1, 2, 4, 8])
REGISTER_OFFSETS = st.sampled_from(sorted(int(r) for r in C.MmioReg))
OFFSETS = st.one_of(st.integers(0, 0xFFF), REGISTER_OFFSETS, REGISTER_OFFSETS.map(lambda o: o + 1),
                    st.integers(C.MmioReg.CONFIG, C.MmioReg.CONFIG + 0x40))
VALUES = st.one_of(st.integers(0, 0xFF), st.sampled_from([0xFFFFFFFF, 0x80000000, 0x7FFF, 0x8000, 0x10000]),
                   st.integers(0, 2**64 - 1))


class MmioWindowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.rig = SndRig()

    def teardown(self) -> None:
        self.rig.close()

    @rule(offset=OFFSETS, size=SIZES)
    def read(self, offset, size):
        data = self.rig.transport.read(offset, size)
        assert isinstance(data, bytes) and len(data) == size

    @rule(offset=OFFSETS, size=SIZES, value=VALUES)
    def write(self, offset, size, value):
        self.rig.transport.write(offset, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    @rule(status=st.integers(0, 0xFF))
    def write_status(self, status):
        self.rig.drv.write32(C.MmioReg.STATUS, status)

    @rule(queue=st.integers(0, 7))
    def kick(self, queue):
        self.rig.drv.kick(queue)

    @rule()
    def legitimate_probe_works(self):
        """Whatever came before, a reset and a clean probe give a working device."""
        self.rig.linux_probe()
        self.rig.query_ok()

    @invariant()
    def healthy(self):
        self.rig.check_resources()
        self.rig.check_healthy()


MmioWindowMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow])
TestMmioWindow = MmioWindowMachine.TestCase


def test_the_traceback_catcher_sees_a_failing_loop_callback():
    """The invariants above rely on this: an exception in a loop callback is caught by the handler."""
    rig = SndRig()
    try:
        def boom():
            raise ValueError("injected")
        rig.loop.call_soon(boom)
        rig.settle()
        assert [r.exc_info[1] for r in rig.catcher.records if r.exc_info][0].args == ("injected",)
    finally:
        rig.close()
