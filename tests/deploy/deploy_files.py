"""Reading deploy/ offline: YAML documents, Kustomize references, Dockerfiles, linters.

No Docker engine or Kubernetes cluster runs where the tests do, so these helpers read the
files as the tools would: Kustomize's references followed to the files they name, Dockerfile
instructions with their continuation lines joined, linters found beside the test's Python.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "production")
KUSTOMIZATION = "kustomization.yaml"


def load_documents(path: Path) -> list[Any]:
    """Every YAML document of a file (empty documents left out)."""
    with path.open() as stream:
        return [document for document in yaml.safe_load_all(stream) if document is not None]


def find_tool(name: str) -> str | None:
    """An executable in this Python's environment (a dev extra), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return shutil.which(name)


@dataclass(frozen=True)
class Kustomization:
    """One kustomization.yaml and the files it names, split by what Kustomize does with them."""

    directory: Path
    resources: tuple[Path, ...]  # files of objects, or directories of other kustomizations
    patches: tuple[Path, ...]
    generator_files: tuple[Path, ...]

    @classmethod
    def read(cls, directory: Path) -> Kustomization:
        """Parse `directory/kustomization.yaml` (paths resolved, not checked)."""
        (document,) = load_documents(directory / KUSTOMIZATION)
        patches = [p["path"] for p in document.get("patches", []) if "path" in p]
        patches += document.get("patchesStrategicMerge", [])
        generators = [
            *document.get("configMapGenerator", []),
            *document.get("secretGenerator", []),
        ]
        generated = [
            entry.partition("=")[2] or entry  # `key=file` or `file`
            for generator in generators
            for entry in (*generator.get("files", []), *generator.get("envs", []))
        ]
        return cls(
            directory,
            tuple(directory / r for r in document.get("resources", [])),
            tuple(directory / p for p in patches),
            tuple(directory / g for g in generated),
        )

    def missing(self) -> list[Path]:
        """Referenced paths that do not exist, in this kustomization and the ones it includes."""
        named = (*self.resources, *self.patches, *self.generator_files)
        absent = [path for path in named if not path.exists()]
        for resource in self.resources:
            if resource.is_dir():
                if (resource / KUSTOMIZATION).is_file():
                    absent += Kustomization.read(resource).missing()
                else:
                    absent.append(resource / KUSTOMIZATION)
        return absent

    def object_files(self) -> Iterator[Path]:
        """The files of whole objects, through included kustomizations (not patches)."""
        for resource in self.resources:
            if resource.is_dir():
                yield from Kustomization.read(resource).object_files()
            else:
                yield resource


def kustomize_build(directory: Path) -> list[dict[str, Any]] | None:
    """`kubectl kustomize DIR` rendered and parsed; None when kubectl is not installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile, comments and parser directives left out."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may sit between continuation lines, as Docker allows
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(arguments.split())))
        pending = ""
    assert not pending, f"{path} ends inside a continued instruction"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions from the last FROM on: what the image is made of."""
    starts = [i for i, instruction in enumerate(instructions) if instruction.keyword == "FROM"]
    return instructions[starts[-1] :]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload among Kubernetes objects."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def by_kind_and_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Objects keyed by (kind, name)."""
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}
