"""A hostile driver after a proper DRIVER_OK: garbage descriptor tables, avail-idx jumps, event
indices, malformed control requests and I/O messages on every queue, and the resource attacks
of issue 7: huge I/O messages and *_INFO replies described by many descriptors naming one
buffer, heads re-published while the device holds them, tiny and huge periods, streams run
with the tone capture source. The device answers every well-formed chain with a spec status
or flags DEVICE_NEEDS_RESET, never raises, never hangs, answers each step within
LOOP_LATENCY_LIMIT, stays within RSS_BUDGET, and a driver reset plus a clean probe always
brings it back."""

from __future__ import annotations

import struct
import time

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pyvmm.virtio import constants as C
from pyvmm.virtio.testing import split_bytes
from pyvmm.virtio.testing.driver import F_INDIRECT, F_NEXT, F_WRITE

from pyvmm_snd import spec
from pyvmm_snd.spec import PcmFormat, PcmRate, QueueIndex, RequestCode
from pyvmm_snd.stream import MAX_BUFFER_BYTES

from hostile_rig import BIG_REGION, RAM, STATUSES, SndRig

GARBAGE_DESCRIPTORS = 16
"""Descriptors 0..15 of every queue are the hostile driver's scratch area; good chains use the rest."""

QUEUES = st.integers(0, 3)
ADDRESSES = st.one_of(st.integers(0x10_0000, 0x20_0000), st.sampled_from([0, RAM - 1, RAM - 8, RAM, RAM + 0x1000,
                                                                          2**63, 2**64 - 16, 2**64 - 1]),
                      st.integers(0, 2**64 - 1))
LENGTHS = st.one_of(st.integers(0, 64), st.sampled_from([15, 17, 4096, 1 << 20, 0x7FFFFFFF, 0xFFFFFFFF]),
                    st.integers(0, 2**32 - 1))
FLAGS = st.one_of(st.sampled_from([0, F_NEXT, F_WRITE, F_NEXT | F_WRITE, F_INDIRECT, F_INDIRECT | F_NEXT,
                                   F_INDIRECT | F_WRITE]), st.integers(0, 0xFFFF))
NEXTS = st.one_of(st.integers(0, GARBAGE_DESCRIPTORS - 1), st.integers(0, 0xFFFF))
DESCRIPTOR = st.tuples(ADDRESSES, LENGTHS, FLAGS, NEXTS)
CODES = st.one_of(st.sampled_from([int(c) for c in RequestCode]), st.integers(0, 2**32 - 1))
U32 = st.one_of(st.integers(0, 8), st.sampled_from([0xFFFFFFFF, 0x80000000, 0x10000]), st.integers(0, 2**32 - 1))


class HostileRingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.rig = SndRig()
        self.answered: set[tuple[int, int]] = set()
        self.must_answer: list[tuple[int, int]] = []
        self.period: dict[int, int] = {}
        """The period of each stream's last SET_PARAMS (whether the device took it or not)."""
        self.period_buffers: dict[tuple[int, int], int] = {}
        """(queue, period size) -> the guest buffer all such messages use (see period_messages)."""
        self.unwatched: set[int] = set()
        """Queues whose chains the device may legitimately never see: disabled, or the driver
        moved avail idx so far (or backwards) that its later entries are not where the device looks."""

    def teardown(self) -> None:
        self.rig.close()

    @initialize()
    def probe(self):
        self.rig.linux_probe()
        for dq in self.rig.drv.queues:
            dq.reserve(*range(GARBAGE_DESCRIPTORS))
        self.answered.clear()
        self.must_answer.clear()
        self.unwatched.clear()
        self.period.clear()

    def _queue(self, index):
        return self.rig.drv.queues[index]

    # -- garbage -----------------------------------------------------------------------------

    @rule(queue=QUEUES, descriptors=st.lists(st.tuples(st.integers(0, GARBAGE_DESCRIPTORS - 1), DESCRIPTOR),
                                             min_size=1, max_size=6),
          heads=st.lists(st.one_of(st.integers(0, GARBAGE_DESCRIPTORS - 1), st.integers(0, 0xFFFF)),
                         min_size=1, max_size=3))
    def garbage_chain(self, queue, descriptors, heads):
        dq = self._queue(queue)
        for index, (addr, length, flags, nxt) in descriptors:
            dq.write_desc(index, addr, length, flags, nxt)
        for head in heads:
            dq.publish(head)

    @rule(queue=QUEUES, entries=st.lists(DESCRIPTOR, min_size=0, max_size=5),
          table_len=st.one_of(st.integers(0, 100), st.sampled_from([0xFFFFFFF0, 2**32 - 1, 16 * 70000])))
    def garbage_indirect(self, queue, entries, table_len):
        dq = self._queue(queue)
        table = dq.alloc.alloc(16 * max(len(entries), 1), 16)
        for i, (addr, length, flags, nxt) in enumerate(entries):
            dq.write_desc(i, addr, length, flags, nxt % 8, table=table)
        dq.write_desc(0, table, table_len, F_INDIRECT)
        dq.publish(0)

    @rule(queue=QUEUES, jump=st.one_of(st.integers(1, 8), st.integers(1, 0xFFFF)),
          slots=st.lists(st.integers(0, 0xFFFF), max_size=4))
    def avail_idx_jump(self, queue, jump, slots):
        dq = self._queue(queue)
        for i, head in enumerate(slots):
            dq.memory.write_u16(dq.avail_ring + 4 + 2 * ((dq.avail_idx + i) % dq.size), head)
        dq.set_avail_idx(dq.avail_idx + jump)
        if jump > dq.size:
            self._unwatch(queue)

    @rule(queue=QUEUES, used_event=st.integers(0, 0xFFFF), avail_flags=st.integers(0, 0xFFFF),
          avail_event=st.integers(0, 0xFFFF), used_flags=st.integers(0, 0xFFFF))
    def scribble_event_fields(self, queue, used_event, avail_flags, avail_event, used_flags):
        dq = self._queue(queue)
        dq.set_used_event(used_event)
        dq.memory.write_u16(dq.avail_ring, avail_flags)
        dq.memory.write_u16(dq.used_ring + 4 + 8 * dq.size, avail_event)
        dq.memory.write_u16(dq.used_ring, used_flags)

    @rule(queue=st.integers(0, 7))
    def kick(self, queue):
        self.rig.drv.kick(queue)

    @rule()
    def kick_all(self):
        for q in range(4):
            self.rig.drv.kick(q)

    # -- well-formed chains with hostile contents -------------------------------------------------

    def _send(self, queue, readable, writable):
        dq = self._queue(queue)
        if len(dq.free) < len(readable) + len(writable):
            return
        head = dq.add(readable, writable)
        if queue not in self.unwatched:
            self.must_answer.append((queue, head))
        self.rig.drv.kick(queue)

    @precondition(lambda self: len(self.must_answer) < 40)
    @rule(out=st.binary(min_size=0, max_size=80), code=CODES, use_code=st.booleans(),
          cuts=st.lists(st.integers(1, 80), max_size=3), in_sizes=st.lists(st.integers(0, 700), min_size=1,
                                                                          max_size=3))
    def control_request(self, out, code, use_code, cuts, in_sizes):
        if use_code:
            out = struct.pack("<I", code) + out
        readable = split_bytes(out, cuts) if out else [b"\0"]
        if sum(in_sizes) == 0:
            in_sizes = [4]
        self._send(QueueIndex.CONTROL, readable, [n for n in in_sizes if n] or [4])

    @precondition(lambda self: len(self.must_answer) < 40)
    @rule(code=st.sampled_from([RequestCode.JACK_INFO, RequestCode.PCM_INFO, RequestCode.CHMAP_INFO,
                                RequestCode.CTL_INFO]), start=U32, count=U32, size=U32,
          room=st.integers(0, 600))
    def query(self, code, start, count, size, room):
        q = spec.QueryInfo(code=code, start_id=start, count=count, size=size)
        self._send(QueueIndex.CONTROL, [bytes(q)], [4] + ([room] if room else []))

    @precondition(lambda self: len(self.must_answer) < 40)
    @rule(tx=st.booleans(), stream=st.one_of(st.integers(0, 3), st.integers(0, 2**32 - 1)),
          header=st.integers(0, 8), data=st.integers(0, 64), status_room=st.integers(0, 16))
    def io_message(self, tx, stream, header, data, status_room):
        queue = QueueIndex.TX if tx else QueueIndex.RX
        head = struct.pack("<I", stream)[:header] if header <= 4 else struct.pack("<I", stream) + bytes(header - 4)
        if tx:
            readable = [b for b in (head, bytes(data)) if b] or [b"\0"]
            writable = [status_room] if status_room else []
        else:
            readable = [head] if head else []
            writable = [n for n in (data, status_room) if n]
        if not readable and not writable:
            return
        dq = self._queue(queue)
        if len(dq.free) < len(readable) + len(writable):
            return
        h = dq.add(readable, writable)
        valid_stream = stream < 2 and (stream == 0) == tx  # the default card: 0 playback, 1 capture
        if not valid_stream and header >= 4 and queue not in self.unwatched:
            self.must_answer.append((queue, h))  # a bad stream id is refused at once
        self.rig.drv.kick(queue)

    # -- resource attacks (issue 7) -------------------------------------------------------------

    @precondition(lambda self: len(self.must_answer) < 40)
    @rule(tx=st.booleans(), stream=st.integers(0, 2), times=st.integers(1, 16),
          length=st.sampled_from([4096, 1 << 20, BIG_REGION]))
    def huge_io_message(self, tx, stream, times, length):
        """Up to 16 descriptors over the same 8 MiB: a message of up to 128 MiB."""
        queue = QueueIndex.TX if tx else QueueIndex.RX
        head = self.rig.repeated_chain(queue, struct.pack("<I", stream), times, length, tx)
        if head is None:
            return
        if times * length > MAX_BUFFER_BYTES and queue not in self.unwatched:
            self.must_answer.append((queue, head))  # larger than any period: refused at once
        self.rig.drv.kick(queue)

    @precondition(lambda self: len(self.must_answer) < 40)
    @rule(code=st.sampled_from([RequestCode.JACK_INFO, RequestCode.PCM_INFO, RequestCode.CHMAP_INFO,
                                RequestCode.CTL_INFO]), count=st.integers(0, 3),
          size=st.sampled_from([1 << 20, BIG_REGION, 0x3DFFFFFC, 0xFFFFFFFF]), times=st.integers(1, 16))
    def huge_info_query(self, code, count, size, times):
        """count x size of reply asked for, with that much writable room (the same 8 MiB again and again)."""
        q = spec.QueryInfo(code=code, start_id=0, count=count, size=size)
        head = self.rig.repeated_chain(QueueIndex.CONTROL, bytes(q), times, BIG_REGION, tx=False)
        if head is not None:
            if QueueIndex.CONTROL not in self.unwatched:
                self.must_answer.append((QueueIndex.CONTROL, head))
            self.rig.drv.kick(QueueIndex.CONTROL)

    @precondition(lambda self: len(self.must_answer) < 40)
    @rule(stream=st.integers(0, 2), frames=st.one_of(st.sampled_from([1, 47, 48, 480, 4800]), st.integers(1, 1 << 20)),
          periods=st.integers(1, 16), rate=st.sampled_from([PcmRate.RATE_8000, PcmRate.RATE_48000, PcmRate.RATE_192000]),
          channels=st.integers(1, 8))
    def set_params(self, stream, frames, periods, rate, channels):
        period = frames * channels * 2
        req = spec.PcmSetParams(code=RequestCode.PCM_SET_PARAMS, stream_id=stream, buffer_bytes=period * periods,
                                period_bytes=period, channels=channels, format=PcmFormat.S16, rate=rate)
        self.period[stream] = period
        self._send(QueueIndex.CONTROL, [bytes(req)], [4])

    @precondition(lambda self: len(self.must_answer) < 40)
    @rule(stream=st.integers(0, 2), code=st.sampled_from([RequestCode.PCM_PREPARE, RequestCode.PCM_START,
                                                          RequestCode.PCM_STOP, RequestCode.PCM_RELEASE]))
    def pcm_command(self, stream, code):
        self._send(QueueIndex.CONTROL, [bytes(spec.PcmHdr(code=code, stream_id=stream))], [4])

    @rule(stream=st.integers(0, 1), count=st.integers(1, 8))
    def period_messages(self, stream, count):
        """Well-sized messages (the last SET_PARAMS' period, or the default one) that a running stream holds."""
        period = self.period.get(stream, 1920)
        if period > MAX_BUFFER_BYTES:
            return
        queue = QueueIndex.TX if stream == 0 else QueueIndex.RX
        dq = self._queue(queue)
        allocate = dq.buffer

        def period_buffer(data):
            """Like Linux (one DMA buffer, sliced per period at hw_params), the frames of every
            message of a period size live in one buffer: the model's bump allocator never frees,
            and fresh megabytes per message ran it out of guest RAM in long fuzz runs."""
            size = data if isinstance(data, int) else len(data)
            if size != period:
                return allocate(data)
            key = (queue, period)
            if key not in self.period_buffers:
                self.period_buffers[key] = allocate(data)
            return self.period_buffers[key]

        dq.buffer = period_buffer
        try:
            for _ in range(count):
                if len(dq.free) < 3:
                    break
                if stream == 0:
                    dq.add([struct.pack("<I", stream), bytes(period)], [8])
                else:
                    dq.add([struct.pack("<I", stream)], [period, 8])
        except MemoryError:
            pass  # the driver is out of its own memory: it adds nothing more
        finally:
            del dq.buffer
        self.rig.drv.kick(queue)

    @rule(queue=QUEUES, times=st.integers(1, 64))
    def republish_held_head(self, queue, times):
        """Publish a head again while the device may still hold it (the in-flight attack)."""
        dq = self._queue(queue)
        if not dq.pending:
            return
        head = sorted(dq.pending)[0]
        for _ in range(times):
            dq.publish(head)
        self._unwatch(queue)
        self.rig.drv.kick(queue)

    @rule(ms=st.integers(1, 30))
    def let_time_pass(self, ms):
        """Running streams' clocks tick (tone capture, xruns)."""
        time.sleep(ms / 1000)

    @rule(queue=QUEUES, kick=st.booleans())
    def disable_live_queue(self, queue, kick):
        """Linux's vm_del_vq order on a live device: QueueReady=0 while the device may hold buffers."""
        self.rig.drv.write32(C.MmioReg.QUEUE_SEL, queue)
        self.rig.drv.write32(C.MmioReg.QUEUE_READY, 0)
        self._unwatch(queue)
        if kick:
            self.rig.drv.kick(queue)

    def _unwatch(self, queue):
        self.unwatched.add(queue)
        self.must_answer = [m for m in self.must_answer if m[0] != queue]

    # -- recovery -----------------------------------------------------------------------------------

    @rule()
    def reset_and_reprobe(self):
        self.rig.drv.reset()
        self.probe()
        self.rig.query_ok()

    # -- invariants ---------------------------------------------------------------------------------

    @invariant()
    def healthy_and_answering(self):
        rig = self.rig
        rig.check_resources()
        rig.check_healthy()
        for i, dq in enumerate(rig.drv.queues):
            for entry in dq.collect():
                self.answered.add((i, entry.id))
                if i == QueueIndex.CONTROL and entry.len >= 4 and len(entry.written) >= 4:
                    assert int.from_bytes(entry.written[:4], "little") in STATUSES, entry
        if rig.drv.status & C.Status.DEVICE_NEEDS_RESET:
            event("device flagged DEVICE_NEEDS_RESET")
            return
        event(f"well-formed chains answered so far: {min(len(self.must_answer), 10)}{'+' if len(self.must_answer) >= 10 else ''}")
        silent = [m for m in self.must_answer if m not in self.answered]
        assert not silent, f"well-formed chains never answered: {silent}"


HostileRingMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=25, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestHostileRings = HostileRingMachine.TestCase


@settings(max_examples=1, database=None, deadline=None)
@given(st.just(None))  # the rules record hypothesis events: they need a test context
def test_long_runs_of_big_period_messages_fit_the_drivers_memory(_):
    """The case a 10^5-example fuzz run found (scripts/fuzz, 63,830th example): 11 capture
    messages of a 3.8 MB period ran the driver model's own allocator out of guest RAM."""
    state = HostileRingMachine()
    try:
        state.probe()
        state.reset_and_reprobe()
        state.pcm_command(code=RequestCode.PCM_PREPARE, stream=0)
        state.set_params(channels=3, frames=634983, periods=1, rate=PcmRate.RATE_8000, stream=1)
        state.period_messages(count=4, stream=1)
        state.period_messages(count=7, stream=1)
        for _ in range(4):
            state.period_messages(count=8, stream=1)
        state.healthy_and_answering()
    finally:
        state.teardown()
