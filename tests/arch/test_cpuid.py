import pytest

from pyvmm.arch.x86_64.cpuid import (
    CPU_MODELS, FEATURES, KVM_CPUID_FLAG_SIGNIFCANT_INDEX as IDX, VENDOR_AMD, VENDOR_INTEL, CpuidEntry,
    parse_cpu_spec, vcpu_cpuid,
)
from pyvmm.errors import VmmError

ALL = 0xFFFF_FFFF


def supported(vendor=VENDOR_INTEL, max_basic=0xD):
    """A host-like supported list with every feature bit set."""
    ebx, ecx, edx = vendor
    return [
        (0x0, 0, 0, max_basic, ebx, ecx, edx),
        (0x1, 0, 0, 0x000906EA, 0x00010800, ALL, ALL),
        (0x4, 0, IDX, 0x1C004121, 0, 0, 0),      # L1d
        (0x4, 1, IDX, 0x1C004122, 0, 0, 0),      # L1i
        (0x4, 2, IDX, 0x1C004143, 0, 0, 0),      # L2
        (0x4, 3, IDX, 0x1C03C163, 0, 0, 0),      # L3
        (0x4, 4, IDX, 0, 0, 0, 0),
        (0x6, 0, 0, 0x27F7, 2, 9, 0),
        (0x7, 0, IDX, 0, ALL, ALL, ALL),
        (0xA, 0, 0, 0x07300404, 0, 0, 0x603),
        (0xB, 0, IDX, 1, 2, 0x100, 5),
        (0xD, 0, IDX, 0x2E7, 0xA88, 0xA88, 0),
        (0xD, 1, IDX, 0xF, 0, 0, 0),
        (0x80000000, 0, 0, 0x8000001F, 0, 0, 0),
        (0x80000001, 0, 0, 0, 0, ALL, ALL),
        (0x80000008, 0, 0, 0x3030, ALL, 0x0000_7007, 0),
        (0x8000001D, 0, IDX, 0x00004121, 0, 0, 0),
        (0x8000001D, 3, IDX, 0x0003C163, 0, 0, 0),
        (0x8000001E, 0, 0, 7, 0x103, 0x101, 0),
        (0x40000000, 0, 0, 0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D),
        (0x40000001, 0, 0, 0x1007EFB, 0, 0, 0),
    ]


def leaf(entries, function, index=0):
    [entry] = [e for e in entries if e.function == function and e.index == index]
    return entry


def has(entries, name):
    bit = FEATURES[name]
    return bool(getattr(leaf(entries, bit.leaf, bit.subleaf), bit.reg) >> bit.bit & 1)


@pytest.mark.parametrize("ncpus", [1, 2, 3, 8])
def test_apic_ids_and_counts_per_vcpu(ncpus):
    for cpu in range(ncpus):
        out = vcpu_cpuid(supported(), cpu, ncpus, CPU_MODELS["host"])
        l1 = leaf(out, 1)
        assert l1.ebx >> 24 == cpu
        assert (l1.ebx >> 16) & 0xFF == ncpus
        assert (l1.ebx >> 8) & 0xFF == 8                      # CLFLUSH size kept
        assert bool(l1.edx >> 28 & 1) == (ncpus > 1)          # HTT
        smt, core, end = (leaf(out, 0xB, i) for i in range(3))
        assert [e.edx for e in (smt, core, end)] == [cpu] * 3
        assert (smt.eax, smt.ebx, smt.ecx) == (0, 1, 0x100)
        assert 1 << core.eax >= ncpus and core.ebx == ncpus and core.ecx == 0x201
        assert end.ebx == 0 and end.ecx >> 8 == 0
        assert all(e.flags & IDX for e in (smt, core, end))


def test_intel_cache_topology():
    out = vcpu_cpuid(supported(), 0, 4, CPU_MODELS["host"])
    assert [(leaf(out, 4, i).eax >> 14) & 0xFFF for i in range(4)] == [0, 0, 0, 3]
    assert all(leaf(out, 4, i).eax >> 26 == 3 for i in range(4))


def test_amd_topology_leaves():
    out = vcpu_cpuid(supported(VENDOR_AMD), 5, 6, CPU_MODELS["host"])
    assert leaf(out, 0x8000001E).eax == 5 and leaf(out, 0x8000001E).ebx == 5
    ext8 = leaf(out, 0x80000008)
    assert ext8.ecx & 0xFF == 5 and (ext8.ecx >> 12) & 0xF == 3
    assert (leaf(out, 0x8000001D, 3).eax >> 14) & 0xFFF == 5
    assert not has(out, "arch_capabilities")
    assert has(vcpu_cpuid(supported(VENDOR_INTEL), 0, 1, CPU_MODELS["host"]), "arch_capabilities")


def test_hypervisor_pmu_and_power_fixups():
    host = supported()
    host[1] = (0x1, 0, 0, 0x906EA, 0, 0, 0)                  # no hypervisor/tsc-deadline bits from the host
    out = vcpu_cpuid(host, 0, 1, CPU_MODELS["host"])
    assert has(out, "hypervisor") and has(out, "tsc_deadline_timer")
    assert (leaf(out, 1).ebx >> 8) & 0xFF == 8               # CLFLUSH default when the host gives 0
    assert not has(vcpu_cpuid(supported(), 0, 1, CPU_MODELS["host"]), "pdcm")
    a = leaf(out, 0xA)
    assert (a.eax, a.ebx, a.ecx, a.edx) == (0, 0, 0, 0)
    assert not leaf(out, 6).eax & 2 and not leaf(out, 6).ecx & 8


def test_kvm_signature_added_when_missing():
    host = [e for e in supported() if e[0] < 0x40000000 or e[0] >= 0x80000000]
    out = vcpu_cpuid(host, 0, 1)
    sig = leaf(out, 0x40000000)
    assert (sig.ebx, sig.ecx, sig.edx) == (0x4B4D564B, 0x564B4D56, 0x4D)


def test_no_topology_leaf_when_max_basic_leaf_is_low():
    out = vcpu_cpuid(supported(max_basic=0xA), 0, 2)
    assert not [e for e in out if e.function == 0xB]


def test_host_model_keeps_features_safe_model_hides():
    host = vcpu_cpuid(supported(), 0, 1, CPU_MODELS["host"])
    safe = vcpu_cpuid(supported(), 0, 1, CPU_MODELS["safe"])
    for name in ("xsave", "avx", "avx2", "popcnt", "smap", "smep", "cx16", "bmi1", "bmi2", "fsgsbase", "pcid",
                 "invpcid", "umip", "pku", "la57", "rdrand", "rdseed", "xsaves", "avx512f", "pdpe1gb"):
        assert has(host, name), name
        assert not has(safe, name), name
    for name in ("sse4_2", "ssse3", "x2apic", "lahf_lm", "rdtscp", "hypervisor"):
        assert has(safe, name), name


def test_named_features_and_dependents():
    model = parse_cpu_spec("host,-xsave,-bmi2")
    out = vcpu_cpuid(supported(), 0, 1, model)
    for name in ("xsave", "avx", "avx2", "fma", "avx512f", "avx512vl", "xsaveopt", "xsaves", "bmi2"):
        assert not has(out, name), name
    assert has(out, "bmi1") and has(out, "sse4_2")


def test_plus_unhides_from_model():
    out = vcpu_cpuid(supported(), 0, 1, parse_cpu_spec("safe,+popcnt"))
    assert has(out, "popcnt") and not has(out, "smap")


def test_input_not_modified_and_namedtuples_accepted():
    from collections import namedtuple
    Entry = namedtuple("Entry", "function index flags eax ebx ecx edx")
    host = [Entry(*e) for e in supported()]
    vcpu_cpuid(host, 1, 2)
    assert host == [Entry(*e) for e in supported()]
    assert isinstance(vcpu_cpuid(host, 0, 1)[0], CpuidEntry)


@pytest.mark.parametrize("spec, message", [
    ("pentium", "unknown CPU model"),
    ("host,-nosuchthing", "unknown CPU feature"),
    ("host,avx", "must start with"),
])
def test_bad_specs(spec, message):
    with pytest.raises(VmmError, match=message):
        parse_cpu_spec(spec)


def test_vcpu_index_range():
    with pytest.raises(ValueError):
        vcpu_cpuid(supported(), 2, 2)


def test_leaf_1f_rewritten_like_0b():
    host = supported(max_basic=0x1F) + [(0x1F, 0, IDX, 1, 2, 0x100, 9), (0x1F, 1, IDX, 4, 16, 0x201, 9)]
    out = vcpu_cpuid(host, 3, 4)
    assert [(e.eax, e.ebx, e.ecx, e.edx) for e in out if e.function == 0x1F] == \
        [(0, 1, 0x100, 3), (2, 4, 0x201, 3), (0, 0, 2, 3)]
