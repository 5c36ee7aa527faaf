"""The hardware probe on this machine and on sample cpuinfo texts."""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path

import pytest

from agent.hardware import GpuInfo, HardwareInfo, format_table, parse_cpuinfo, probe_hardware
from agent.runtimes.registry import RuntimeRegistry

ARM_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp sve i8mm bf16
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""

PI_CPUINFO = """\
processor\t: 0
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd08
Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""

X86_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512vnni avx_vnni amx_bf16 amx_tile amx_int8
"""


@pytest.fixture(scope="module")
def registry() -> RuntimeRegistry:
    return RuntimeRegistry.default()


@pytest.fixture(scope="module")
def info(registry: RuntimeRegistry) -> HardwareInfo:
    return probe_hardware(registry)


def test_probe_is_plausible_here(info: HardwareInfo) -> None:
    assert info.arch == platform.machine()
    assert info.logical_cores >= 1
    assert info.physical_cores is None or 1 <= info.physical_cores <= info.logical_cores
    assert info.memory_bytes > 0
    assert info.cpu_model
    assert {r.name for r in info.runtimes} == {"onnxruntime", "openvino", "tflite"}
    assert "AzureExecutionProvider" not in info.onnxruntime_providers
    assert "CPUExecutionProvider" in info.onnxruntime_providers
    assert "CPU" in {d.name for d in info.openvino_devices}
    if not info.gpus:
        assert info.gpu_reason


def test_cpu_features_match_proc_cpuinfo(info: HardwareInfo) -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo here")
    flags = {
        flag
        for line in cpuinfo.read_text().splitlines()
        if line.startswith("flags")
        for flag in line.partition(":")[2].split()
    }
    if info.arch == "x86_64" and "avx2" in flags:
        assert "avx2" in info.cpu_features


def test_fingerprint_is_stable_and_tracks_performance_inputs(
    info: HardwareInfo, registry: RuntimeRegistry
) -> None:
    fingerprint = info.fingerprint()
    assert len(fingerprint) == 16
    int(fingerprint, 16)
    assert probe_hardware(registry).fingerprint() == fingerprint
    changed = [
        dataclasses.replace(info, cpu_features=(*info.cpu_features, "amx")),
        dataclasses.replace(info, logical_cores=info.logical_cores + 1),
        dataclasses.replace(info, cpu_model=info.cpu_model + " v2"),
        dataclasses.replace(info, gpus=(GpuInfo("NVIDIA L4", 24 << 30, "550.54", "8.9"),)),
    ]
    assert len({c.fingerprint() for c in changed} | {fingerprint}) == 5
    # Memory size does not change which runtime is fastest.
    assert dataclasses.replace(info, memory_bytes=1).fingerprint() == fingerprint


def test_arm_cpuinfo_reports_neon_and_friends() -> None:
    model, features = parse_cpuinfo(ARM_CPUINFO)
    assert set(features) == {"neon", "asimddp", "sve", "i8mm", "bf16"}
    assert model == "implementer 0x41 part 0xd40"
    model, features = parse_cpuinfo(PI_CPUINFO)
    assert (model, features) == ("Raspberry Pi 4 Model B Rev 1.4", ("neon",))


def test_x86_cpuinfo_names_are_normalised() -> None:
    model, features = parse_cpuinfo(X86_CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert features == ("amx", "avx", "avx2", "avx512_vnni", "avx512f", "avx_vnni", "fma")


def test_probe_degrades_without_cpuinfo_or_runtimes(tmp_path: Path) -> None:
    info = probe_hardware(RuntimeRegistry([]), cpuinfo=tmp_path / "no-cpuinfo")
    assert info.cpu_features == ()
    assert info.cpu_model
    assert info.runtimes == ()
    assert info.onnxruntime_providers == ()
    assert info.openvino_devices == ()
    assert info.logical_cores >= 1


def test_as_dict_is_json_and_table_is_aligned(info: HardwareInfo) -> None:
    data = json.loads(json.dumps(info.as_dict()))
    assert data["fingerprint"] == info.fingerprint()
    assert data["arch"] == info.arch
    table = format_table(info)
    assert info.fingerprint() in table
    lines = table.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("runtime "))
    header, rows = lines[header_at], lines[header_at + 2 :]
    assert [row.split()[0] for row in rows] == ["onnxruntime", "openvino", "tflite"]
    for row in rows:
        assert row[header.index("installed") :].startswith(("yes", "no"))
        assert row[header.index("version") :].split()[0] in {r.version for r in info.runtimes}
