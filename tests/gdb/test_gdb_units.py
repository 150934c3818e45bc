"""The stub's pure parts: packet framing and bounds, debug-register allocation, the register layout, addresses."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvmm.errors import VmmError
from pyvmm.gdbstub import packets as rsp
from pyvmm.gdbstub.breakpoints import DebugRegisters, Kind, NoDebugRegister, aligned_pieces
from pyvmm.gdbstub.registers import INDEX, REGISTERS, REGISTERS_SIZE, RegisterFile, target_xml
from pyvmm.gdbstub.server import GdbAddress
from pyvmm.kvm.structs import kvm_fpu, kvm_regs, kvm_sregs


# -- framing -----------------------------------------------------------------------------------

def test_packets_acks_and_interrupt_are_split_from_a_stream():
    reader = rsp.PacketReader()
    events = reader.feed(b"+$qSupported:swbreak+#" + b"%02x" % rsp.checksum(b"qSupported:swbreak+") + b"\x03-")
    assert events == [rsp.Ack(True), rsp.Packet(b"qSupported:swbreak+"), rsp.Interrupt(), rsp.Ack(False)]


def test_packet_split_across_reads_and_bad_checksum_asks_for_a_resend():
    reader = rsp.PacketReader()
    assert reader.feed(b"$g#") == []
    assert reader.feed(b"67") == [rsp.Packet(b"g")]
    assert reader.feed(b"$g#00") == [rsp.Ack(False)]
    assert reader.bad_checksums == 1


def test_oversized_packet_is_a_protocol_error_not_memory_growth():
    reader = rsp.PacketReader(max_packet=64)
    with pytest.raises(rsp.ProtocolError):
        reader.feed(b"$" + b"x" * 100)
    assert len(reader._buf) == 0


@given(st.binary(max_size=300))
def test_escape_round_trip_and_frame_has_no_raw_specials(data):
    escaped = rsp.escape(data)
    assert rsp.unescape(escaped) == data
    assert not set(escaped) & {ord("$"), ord("#"), ord("*")}
    assert rsp.PacketReader().feed(rsp.frame(escaped)) == [rsp.Packet(escaped)]


@given(st.binary(max_size=2000))
def test_reader_never_raises_on_noise_below_the_bound(data):
    reader = rsp.PacketReader(max_packet=4096)
    reader.feed(data)


# -- debug registers -----------------------------------------------------------------------------

def test_dr7_for_an_execution_breakpoint_and_a_write_watchpoint():
    regs = DebugRegisters()
    regs.insert(Kind.EXEC, 0xFFFF_FFFF_8100_0000)
    regs.insert(Kind.WRITE, 0x3008, 8)
    dr = regs.debugreg()
    assert dr[0] == 0xFFFF_FFFF_8100_0000 and dr[1] == 0x3008
    # G0 exec/1 byte; G1 write (01) / 8 bytes (10); GE + reserved bit 10
    assert dr[7] == 0x600 | 0b10 | (0b10 << 2) | (0b01 << 20) | (0b10 << 22)
    assert regs.hits(0b10)[0].kind is Kind.WRITE


def test_unaligned_watchpoint_takes_several_registers_and_the_fifth_is_refused():
    assert aligned_pieces(0x1003, 6) == [(0x1003, 1), (0x1004, 4), (0x1008, 1)]
    regs = DebugRegisters()
    regs.insert(Kind.ACCESS, 0x1003, 6)
    assert regs.free == 1
    with pytest.raises(NoDebugRegister):
        regs.insert(Kind.WRITE, 0x2001, 2)  # 0x2001/1 + 0x2002/1: two needed, one free
    regs.insert(Kind.EXEC, 0x5000)
    assert regs.free == 0
    assert regs.remove(Kind.ACCESS, 0x1003, 6) and regs.free == 3
    assert not regs.remove(Kind.ACCESS, 0x1003, 6)


def test_same_request_twice_is_counted_not_duplicated():
    regs = DebugRegisters()
    regs.insert(Kind.EXEC, 0x10)
    regs.insert(Kind.EXEC, 0x10)
    assert regs.free == 3
    regs.remove(Kind.EXEC, 0x10)
    assert regs.free == 3
    regs.remove(Kind.EXEC, 0x10)
    assert regs.free == 4 and not regs


@given(st.integers(0, 2**64 - 64), st.integers(1, 32))
def test_pieces_cover_the_range_exactly_and_are_aligned(address, length):
    pieces = aligned_pieces(address, length)
    assert sum(size for _, size in pieces) == length
    assert pieces[0][0] == address
    for (a, size), (b, _) in zip(pieces, pieces[1:]):
        assert a + size == b
    assert all(a % size == 0 and size in (1, 2, 4, 8) for a, size in pieces)


# -- registers -----------------------------------------------------------------------------------

def test_target_description_lists_every_register_in_wire_order():
    root = ET.fromstring(target_xml())
    assert root.find("architecture").text == "i386:x86-64"
    regs = root.findall("./feature/reg")
    assert [r.get("name") for r in regs] == [r.name for r in REGISTERS]
    assert [int(r.get("regnum")) for r in regs] == list(range(len(REGISTERS)))
    assert {f.get("name") for f in root.findall("feature")} >= {"org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse"}
    assert REGISTERS_SIZE == 16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 16 * 16 + 4 + 2 * 8 + 6 * 8


class _FakeFd:
    def __init__(self):
        self.regs, self.sregs, self.fpu = kvm_regs(rax=1, rip=0xFFFF_FFFF_8100_0000, rflags=0x246), kvm_sregs(), kvm_fpu()
        self.sregs.cs.selector, self.sregs.gs.base, self.sregs.cr3 = 0x10, 0xFFFF_8880_0000_0000, 0x1234000
        self.fpu.fcw, self.fpu.mxcsr, self.fpu.ftwx = 0x37F, 0x1F80, 0
        self.sets = []

    def get_regs(self):
        return self.regs

    def get_sregs(self):
        return self.sregs

    def get_fpu(self):
        return self.fpu

    def set_regs(self, r):
        self.sets.append("regs")

    def set_sregs(self, r):
        self.sets.append("sregs")

    def set_fpu(self, r):
        self.sets.append("fpu")


def test_register_file_maps_kvm_state_and_writes_back_only_what_changed():
    fd = _FakeFd()
    regs = RegisterFile(fd)
    blob = regs.read_all()
    assert len(blob) == REGISTERS_SIZE
    assert regs.read(INDEX["rip"]) == (0xFFFF_FFFF_8100_0000).to_bytes(8, "little")
    assert regs.read(INDEX["eflags"]) == (0x246).to_bytes(4, "little")
    assert regs.read(INDEX["cs"]) == (0x10).to_bytes(4, "little")
    assert regs.read(INDEX["gs_base"]) == (0xFFFF_8880_0000_0000).to_bytes(8, "little")
    assert regs.read(INDEX["cr3"]) == (0x1234000).to_bytes(8, "little")
    assert regs.read(INDEX["ftag"]) == (0xFFFF).to_bytes(4, "little")  # all x87 registers empty
    regs.write_all(blob)  # G with the same values
    regs.write(INDEX["rbx"], (7).to_bytes(8, "little"))
    regs.store()
    assert fd.sets == ["regs", "sregs", "fpu"] and fd.regs.rbx == 7
    regs.write(INDEX["mxcsr"], (0x1F00).to_bytes(4, "little"))
    regs.store()
    assert fd.sets[-1] == "fpu" and fd.fpu.mxcsr == 0x1F00
    with pytest.raises(ValueError):
        regs.write(INDEX["rax"], b"\0" * 4)


# -- addresses -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("tcp::1234", GdbAddress("tcp", "127.0.0.1", 1234)),
    ("1234", GdbAddress("tcp", "127.0.0.1", 1234)),
    ("tcp:0.0.0.0:4321", GdbAddress("tcp", "0.0.0.0", 4321)),
    ("unix:/tmp/x.sock", GdbAddress("unix", path="/tmp/x.sock")),
])
def test_gdb_addresses(text, expected):
    assert GdbAddress.parse(text) == expected


@pytest.mark.parametrize("text", ["tcp:", "tcp::0x10", "tcp::99999", "unix:", "serial:/dev/ttyS0", ""])
def test_bad_gdb_addresses_are_one_line_errors(text):
    with pytest.raises(VmmError, match="--gdb"):
        GdbAddress.parse(text)
