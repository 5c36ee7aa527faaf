"""OpenVINO IR (`.xml` + `.bin`) converted from the FP32 ONNX model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# OpenVINO names unnamed nodes `<Type>_<n>` from a process-wide counter, so a second conversion
# in the same process would write different XML (and a different sha256) for the same model.
_GENERATED_NAME = re.compile(r"([A-Za-z]+)_\d+")


def missing_reason() -> str | None:
    """Return why OpenVINO IR cannot be written here, or None when `openvino` imports."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"openvino is not importable ({exc}); pip install 'edgefleet[openvino]'"
    return None


def write_ir(onnx_path: Path, xml_path: Path, name: str) -> Path:
    """Convert an ONNX model to FP32 OpenVINO IR at `xml_path`; return the `.bin` path."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    # The ONNX frontend calls every model "onnx_Frontend_IR"; a real name shows up in logs.
    model.set_friendly_name(name)
    _rename_generated(model)
    # save_model compresses weights to FP16 by default (max |diff| about 3e-5), which would
    # break the FP32 tolerance; tensor names and the dynamic batch dim survive conversion.
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path.with_suffix(".bin")


def _rename_generated(model: Any) -> None:
    """Give counter-generated node names a number from the node's position instead."""
    for position, op in enumerate(model.get_ordered_ops()):
        match = _GENERATED_NAME.fullmatch(op.get_friendly_name())
        if match:
            op.set_friendly_name(f"{match.group(1)}_{position}")
