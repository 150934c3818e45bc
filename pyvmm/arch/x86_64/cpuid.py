"""Guest CPUID: a CPU model (which features to hide) applied to KVM's supported set, then
the per-vCPU fix-ups every VMM owes the guest (APIC ids, topology, hypervisor bit, PMU off).

Follows Firecracker's "CPUID normalization" (``docs/cpu_templates/cpuid-normalization.md``).
The topology presented is one package, one thread per core, APIC id = vCPU index.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pyvmm.errors import VmmError

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1   # (sic) the index (subleaf) selects the entry

VENDOR_INTEL = (0x756E6547, 0x6C65746E, 0x49656E69)   # "GenuineIntel" as ebx, ecx, edx
VENDOR_AMD = (0x68747541, 0x444D4163, 0x69746E65)     # "AuthenticAMD"
KVM_SIGNATURE = (0x4B4D564B, 0x564B4D56, 0x4D)         # "KVMKVMKVM\0\0\0" as ebx, ecx, edx
KVM_CPUID_SIGNATURE = 0x40000000
KVM_CPUID_FEATURES = 0x40000001

TOPOLOGY_LEVEL_INVALID = 0
TOPOLOGY_LEVEL_SMT = 1
TOPOLOGY_LEVEL_CORE = 2


@dataclass
class CpuidEntry:
    """One ``kvm_cpuid_entry2``."""

    function: int
    index: int = 0
    flags: int = 0
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0


@dataclass(frozen=True)
class FeatureBit:
    leaf: int
    subleaf: int
    reg: str
    bit: int


def _bits(leaf: int, subleaf: int, reg: str, names: dict[str, int]) -> dict[str, FeatureBit]:
    return {name: FeatureBit(leaf, subleaf, reg, bit) for name, bit in names.items()}


# Names as /proc/cpuinfo and Linux's clearcpuid= spell them.
FEATURES: dict[str, FeatureBit] = {
    **_bits(0x1, 0, "ecx", {
        "pni": 0, "pclmulqdq": 1, "monitor": 3, "vmx": 5, "ssse3": 9, "fma": 12, "cx16": 13, "pdcm": 15,
        "pcid": 17, "sse4_1": 19, "sse4_2": 20, "x2apic": 21, "movbe": 22, "popcnt": 23,
        "tsc_deadline_timer": 24, "aes": 25, "xsave": 26, "avx": 28, "f16c": 29, "rdrand": 30,
        "hypervisor": 31}),
    **_bits(0x7, 0, "ebx", {
        "fsgsbase": 0, "tsc_adjust": 1, "bmi1": 3, "hle": 4, "avx2": 5, "smep": 7, "bmi2": 8, "erms": 9,
        "invpcid": 10, "rtm": 11, "avx512f": 16, "avx512dq": 17, "rdseed": 18, "adx": 19, "smap": 20,
        "avx512ifma": 21, "clflushopt": 23, "clwb": 24, "avx512cd": 28, "sha_ni": 29, "avx512bw": 30,
        "avx512vl": 31}),
    **_bits(0x7, 0, "ecx", {
        "avx512vbmi": 1, "umip": 2, "pku": 3, "waitpkg": 5, "avx512_vbmi2": 6, "gfni": 8, "vaes": 9,
        "vpclmulqdq": 10, "avx512_vnni": 11, "avx512_bitalg": 12, "avx512_vpopcntdq": 14, "la57": 16,
        "rdpid": 22}),
    **_bits(0x7, 0, "edx", {
        "fsrm": 4, "avx512_vp2intersect": 8, "md_clear": 10, "serialize": 14, "amx_bf16": 22,
        "avx512_fp16": 23, "amx_tile": 24, "amx_int8": 25, "arch_capabilities": 29}),
    **_bits(0xD, 1, "eax", {"xsaveopt": 0, "xsavec": 1, "xgetbv1": 2, "xsaves": 3}),
    **_bits(0x80000001, 0, "ecx", {
        "lahf_lm": 0, "svm": 2, "abm": 5, "sse4a": 6, "misalignsse": 7, "3dnowprefetch": 8, "xop": 11,
        "fma4": 16, "tbm": 21, "topoext": 22}),
    **_bits(0x80000001, 0, "edx", {"mmxext": 22, "pdpe1gb": 26, "rdtscp": 27}),
    **_bits(0x80000008, 0, "ebx", {"clzero": 0, "xsaveerptr": 2, "wbnoinvd": 9}),
}

# Hiding a feature hides what cannot work without it.
FEATURE_DEPENDENTS: dict[str, tuple[str, ...]] = {
    "xsave": ("avx", "xsaveopt", "xsavec", "xgetbv1", "xsaves", "pku", "amx_tile", "xsaveerptr"),
    "avx": ("avx2", "fma", "f16c", "avx512f", "vaes", "vpclmulqdq", "xop", "fma4"),
    "avx512f": ("avx512dq", "avx512ifma", "avx512cd", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vbmi2",
                "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq", "avx512_vp2intersect", "avx512_fp16"),
    "amx_tile": ("amx_bf16", "amx_int8"),
}


def with_dependents(names: set[str] | frozenset[str]) -> frozenset[str]:
    closed, todo = set(names), list(names)
    while todo:
        for dep in FEATURE_DEPENDENTS.get(todo.pop(), ()):
            if dep not in closed:
                closed.add(dep)
                todo.append(dep)
    return frozenset(closed)


@dataclass(frozen=True)
class CpuModel:
    """A named starting point (``host``: everything KVM supports) minus hidden features."""

    name: str
    hidden: frozenset[str] = frozenset()


# Instructions the kvm_pvm emulator (platform.md) failed on or that a guest kernel uses
# early and opportunistically (XSAVE state, TSX, virtualisation, PMU, crypto, newer ISA
# extensions), plus IA32_ARCH_CAPABILITIES, which some hosts refuse to let a VMM set.
SAFE_HIDDEN = with_dependents(frozenset({
    "xsave", "popcnt", "smap", "smep", "cx16", "bmi1", "bmi2", "abm", "movbe", "fsgsbase", "pcid",
    "invpcid", "umip", "pku", "la57", "rdrand", "rdseed", "hle", "rtm", "waitpkg", "arch_capabilities",
    "pdcm", "monitor", "vmx", "svm", "adx", "sha_ni", "aes", "pclmulqdq", "gfni", "tbm", "pdpe1gb",
    "serialize",
}))

CPU_MODELS: dict[str, CpuModel] = {
    "host": CpuModel("host"),
    "safe": CpuModel("safe", SAFE_HIDDEN),
}
DEFAULT_CPU_MODEL = "safe"


def parse_cpu_spec(spec: str) -> CpuModel:
    """``MODEL[,-feature|,+feature]...``, e.g. ``host,-xsave,-avx`` or ``safe,+popcnt``.

    ``+feature`` only un-hides what the model hides; no feature beyond what KVM supports
    can be added.
    """
    name, *changes = [part.strip() for part in spec.split(",")]
    if name not in CPU_MODELS:
        raise VmmError(f"unknown CPU model {name!r} (choose from {', '.join(CPU_MODELS)})")
    hidden = set(CPU_MODELS[name].hidden)
    for change in changes:
        sign, feature = change[:1], change[1:]
        if sign not in ("+", "-"):
            raise VmmError(f"CPU feature {change!r} must start with '+' or '-' (e.g. -avx)")
        if feature not in FEATURES:
            raise VmmError(f"unknown CPU feature {feature!r} (known: {', '.join(sorted(FEATURES))})")
        if sign == "-":
            hidden |= with_dependents({feature})
        else:
            hidden.discard(feature)
    return CpuModel(spec, frozenset(hidden))


# -- applying a model ---------------------------------------------------------------

def _find(entries: list[CpuidEntry], function: int, index: int = 0) -> CpuidEntry | None:
    for entry in entries:
        if entry.function == function and (entry.index == index or not entry.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX):
            return entry
    return None


def _set_bit(entry: CpuidEntry, reg: str, bit: int, on: bool) -> None:
    value = getattr(entry, reg)
    setattr(entry, reg, value | (1 << bit) if on else value & ~(1 << bit))


def _set_field(value: int, lo: int, width: int, field_value: int) -> int:
    mask = ((1 << width) - 1) << lo
    return (value & ~mask) | ((field_value << lo) & mask)


def _vendor(entries: list[CpuidEntry]) -> tuple[int, int, int] | None:
    leaf0 = _find(entries, 0)
    return (leaf0.ebx, leaf0.ecx, leaf0.edx) if leaf0 else None


def hide_features(entries: list[CpuidEntry], hidden: frozenset[str]) -> None:
    for name in hidden:
        bit = FEATURES[name]
        entry = _find(entries, bit.leaf, bit.subleaf)
        if entry is not None:
            _set_bit(entry, bit.reg, bit.bit, False)


def _apic_id_width(ncpus: int) -> int:
    """Bits of APIC id that number the cores of the package."""
    return max(ncpus - 1, 0).bit_length()


def _topology_leaf(entries: list[CpuidEntry], function: int, apic_id: int, ncpus: int) -> None:
    """Rewrite leaf 0xb or 0x1f: an SMT level of one thread, a core level of ``ncpus``."""
    entries[:] = [e for e in entries if e.function != function]
    levels = [
        (0, 1, TOPOLOGY_LEVEL_SMT),
        (_apic_id_width(ncpus), ncpus, TOPOLOGY_LEVEL_CORE),
        (0, 0, TOPOLOGY_LEVEL_INVALID),
    ]
    for subleaf, (shift, count, level_type) in enumerate(levels):
        entries.append(CpuidEntry(function, subleaf, KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                                  eax=shift, ebx=count, ecx=subleaf | level_type << 8, edx=apic_id))


def _cache_sharing(entries: list[CpuidEntry], function: int, ncpus: int, set_cores: bool) -> None:
    """Leaf 4 / 0x8000001d: L1/L2 private to a core, L3 shared by the package."""
    for entry in entries:
        if entry.function != function or entry.eax & 0x1F == 0:
            continue
        level = (entry.eax >> 5) & 0x7
        sharing = ncpus - 1 if level >= 3 else 0
        entry.eax = _set_field(entry.eax, 14, 12, sharing)
        if set_cores:
            entry.eax = _set_field(entry.eax, 26, 6, min(ncpus, 64) - 1)


def _entry_from(value) -> CpuidEntry:
    """A private, mutable copy of anything with the seven ``kvm_cpuid_entry2`` fields (or a 7-tuple)."""
    if hasattr(value, "function"):
        return CpuidEntry(value.function, value.index, value.flags, value.eax, value.ebx, value.ecx, value.edx)
    return CpuidEntry(*value)


def vcpu_cpuid(supported: Iterable, cpu_index: int, ncpus: int,
               model: CpuModel = CPU_MODELS[DEFAULT_CPU_MODEL]) -> list[CpuidEntry]:
    """The CPUID table for vCPU ``cpu_index`` of ``ncpus`` (to pass to KVM_SET_CPUID2)."""
    if not 0 <= cpu_index < ncpus:
        raise ValueError(f"vCPU {cpu_index} out of range for {ncpus} vCPUs")
    entries = [_entry_from(e) for e in supported]
    hide_features(entries, model.hidden)
    apic_id = cpu_index
    vendor = _vendor(entries)
    leaf0 = _find(entries, 0)
    max_basic = leaf0.eax if leaf0 is not None else 0

    leaf1 = _find(entries, 0x1)
    if leaf1 is not None:
        leaf1.ebx = _set_field(leaf1.ebx, 24, 8, apic_id)
        leaf1.ebx = _set_field(leaf1.ebx, 16, 8, min(ncpus, 255))
        if (leaf1.ebx >> 8) & 0xFF == 0:
            leaf1.ebx = _set_field(leaf1.ebx, 8, 8, 8)     # CLFLUSH line size in 8-byte units
        _set_bit(leaf1, "ecx", FEATURES["pdcm"].bit, False)   # no PERF_CAPABILITIES MSR
        _set_bit(leaf1, "ecx", FEATURES["tsc_deadline_timer"].bit, True)  # KVM's LAPIC emulates it
        _set_bit(leaf1, "ecx", FEATURES["hypervisor"].bit, True)
        _set_bit(leaf1, "edx", 28, ncpus > 1)           # HTT: EBX[23:16] is meaningful

    leaf6 = _find(entries, 0x6)
    if leaf6 is not None:
        _set_bit(leaf6, "eax", 1, False)                # turbo boost
        _set_bit(leaf6, "ecx", 3, False)                # energy/performance bias
    leaf_a = _find(entries, 0xA)
    if leaf_a is not None:                              # no virtual PMU from this VMM
        leaf_a.eax = leaf_a.ebx = leaf_a.ecx = leaf_a.edx = 0

    for function in (0xB, 0x1F):
        if max_basic >= function and (function == 0xB or _find(entries, function) is not None):
            _topology_leaf(entries, function, apic_id, ncpus)
        else:   # beyond the maximum leaf: the guest must not see a stale host topology
            entries[:] = [e for e in entries if e.function != function]

    if vendor == VENDOR_INTEL:
        _cache_sharing(entries, 0x4, ncpus, set_cores=True)
    elif vendor == VENDOR_AMD:
        leaf7 = _find(entries, 0x7, 0)
        if leaf7 is not None:
            _set_bit(leaf7, "edx", FEATURES["arch_capabilities"].bit, False)
        _cache_sharing(entries, 0x8000001D, ncpus, set_cores=False)
        ext8 = _find(entries, 0x80000008)
        if ext8 is not None:
            ext8.ecx = _set_field(ext8.ecx, 0, 8, ncpus - 1)
            ext8.ecx = _set_field(ext8.ecx, 12, 4, _apic_id_width(ncpus))
        ext1e = _find(entries, 0x8000001E)
        if ext1e is not None:
            ext1e.eax = apic_id
            ext1e.ebx = cpu_index & 0xFF                 # compute unit id; one thread per unit
            ext1e.ecx = 0                                # node 0 of 1

    if _find(entries, KVM_CPUID_SIGNATURE) is None:
        entries.append(CpuidEntry(KVM_CPUID_SIGNATURE, 0, 0, KVM_CPUID_FEATURES, *KVM_SIGNATURE))
    return entries
