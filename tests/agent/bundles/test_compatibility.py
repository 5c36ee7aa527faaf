"""The manifest's compatibility section against a device profile."""

from __future__ import annotations

import pytest

from agent.bundles.compatibility import DeviceProfile, usable_variants
from agent.errors import ActivationFailed
from shared.manifest import Compatibility, Variant

DEVICE = DeviceProfile(
    {"onnxruntime": "1.32.0", "tflite": "2.3.0"}, frozenset({"avx2", "fma"}), 8 << 30
)
VARIANTS = (
    Variant("onnxruntime", "fp32", "m.onnx"),
    Variant("openvino", "fp32", "m.xml"),
    Variant("tflite", "fp32", "m.tflite"),
)


def test_variants_whose_runtime_is_missing_or_too_old_are_left_out() -> None:
    wanted = Compatibility(min_runtime_versions={"onnxruntime": "1.40", "tflite": "2.1.0"})
    assert [v.file for v in usable_variants(wanted, VARIANTS, DEVICE)] == ["m.tflite"]


def test_no_usable_variant_says_why() -> None:
    wanted = Compatibility(min_runtime_versions={"onnxruntime": "2.0", "tflite": "3.0"})
    with pytest.raises(ActivationFailed, match=r"onnxruntime 1\.32\.0 < 2\.0 required") as info:
        usable_variants(wanted, VARIANTS, DEVICE)
    assert "openvino is not installed" in str(info.value)


def test_cpu_features_and_memory() -> None:
    with pytest.raises(ActivationFailed, match="avx512_vnni"):
        usable_variants(Compatibility(cpu_features=("avx2", "avx512_vnni")), VARIANTS, DEVICE)
    with pytest.raises(ActivationFailed, match="needs 16384 MiB of memory"):
        usable_variants(Compatibility(min_memory_bytes=16 << 30), VARIANTS, DEVICE)
    assert len(usable_variants(Compatibility(cpu_features=("avx2",)), VARIANTS, DEVICE)) == 2
