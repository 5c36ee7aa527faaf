"""The dependency rules of DESIGN.md section 1, checked on the source itself.

agent -> shared and control_plane -> shared only; runtimes never import aiohttp; runtime
packages are imported lazily (inside functions), so a device without them still starts.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_PACKAGES = {"onnxruntime", "openvino", "ai_edge_litert", "tflite_runtime", "onnx", "pynvml"}


def imports(path: Path, top_level_only: bool = False) -> Iterator[str]:
    """Every module a file imports (optionally only at module level)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("agent", "control_plane"),
        ("control_plane", "agent"),
        ("shared", "agent"),
        ("shared", "control_plane"),
    ],
)
def test_packages_depend_one_way(package: str, forbidden: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources(package)
        for name in imports(path)
        if name == forbidden or name.startswith(forbidden + ".")
    ]
    assert offenders == []


def test_runtimes_never_import_aiohttp() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in sources("agent/runtimes")
        if any(name.split(".")[0] == "aiohttp" for name in imports(path))
    ]
    assert offenders == []


def test_runtime_packages_are_imported_lazily() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name} at module level"
        for package in ("agent", "shared", "control_plane")
        for path in sources(package)
        for name in imports(path, top_level_only=True)
        if name.split(".")[0] in RUNTIME_PACKAGES
    ]
    assert offenders == []


def test_the_rule_checker_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import os\nfrom control_plane.x import y\ndef f():\n    import onnx\n")
    assert list(imports(sample)) == ["os", "control_plane.x", "onnx"]
    assert list(imports(sample, top_level_only=True)) == ["os", "control_plane.x"]
