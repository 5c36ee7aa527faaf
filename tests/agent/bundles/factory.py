"""Keys on disk, signed bundles and assignments, for tests of the agent's bundle path.

Bundles hold `.fake` models (see `tests.agent.fakes`) so a test decides how a version behaves:
its output scale, latency, and whether it fails after some runs. Their golden vectors are
computed here the way the fake computes (x * scale), so a bundle passes validation unless a
test makes it lie.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import AgentSettings, BundleSettings, SelectionSettings
from shared.assignment import Assignment, ModelAssignment, sign_assignment
from shared.bundle import write_bundle
from shared.keylist import KeyList, sign_key_list
from shared.keys import PrivateKey, save_public
from shared.manifest import (
    BatchingHints,
    Compatibility,
    FileEntry,
    Golden,
    Manifest,
    TensorSignature,
    Variant,
)

GOLDEN_INPUTS = np.arange(16, dtype=np.float32).reshape(4, 4) / 8


@dataclass
class BuiltBundle:
    """A bundle file and what an assignment needs to name it."""

    path: Path
    name: str
    version: int
    digest: str
    size: int

    def assigned(self, url: str | None = None) -> ModelAssignment:
        """This bundle as an assignment entry (a file:// URL by default)."""
        return ModelAssignment(
            self.name, self.version, self.digest, url or self.path.resolve().as_uri(), self.size
        )


class Fleet:
    """An operator's keys and a device's view of them, in a temporary directory."""

    def __init__(self, root: Path, device_id: str = "edge-1") -> None:
        self.dir = root
        root.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.root_key = PrivateKey.generate()
        self.release_key = PrivateKey.generate()
        self.assignment_key = PrivateKey.generate()
        key_list = KeyList(
            1,
            time.time(),
            self.root_key.public,
            (self.release_key.public,),
            (self.assignment_key.public,),
        )
        self.keylist_path = root / "keylist.json"
        self.keylist_path.write_bytes(sign_key_list(key_list, [self.root_key]))
        self.root_pub = root / "root.pub"
        save_public(self.root_pub, self.root_key.public)
        self.assignment_path = root / "assignment.json"
        self.serial = 0

    def settings(self, state_dir: Path, **bundles: Any) -> AgentSettings:
        """Agent settings following this fleet's assignment file, with fast probation."""
        options: dict[str, Any] = {
            "assignment": str(self.assignment_path),
            "root_key": str(self.root_pub),
            "keylist": str(self.keylist_path),
            "poll_interval_s": 0.2,
            "probation_duration_s": 0.5,
            "probation_min_requests": 5,
        }
        options.update(bundles)
        return AgentSettings(
            state_dir=state_dir,
            device_id=self.device_id,
            selection=SelectionSettings(budget_s=0.05),
            bundles=replace(BundleSettings(), **options),
        )

    def fake_bundle(
        self, name: str, version: int, signer: PrivateKey | None = None, **behaviour: Any
    ) -> BuiltBundle:
        """A signed bundle of a fake model (scale 2 unless `behaviour` says otherwise)."""
        work = self.dir / f"{name}-v{version}-src"
        work.mkdir(parents=True, exist_ok=True)
        model = work / "model.fake"
        model.write_text(json.dumps({"scale": 2.0, **behaviour}))
        scale = float(behaviour.get("scale", 2.0))
        inputs, expected = work / "inputs.npz", work / "expected.npz"
        np.savez(inputs, x=GOLDEN_INPUTS)
        np.savez(expected, y=GOLDEN_INPUTS * scale)
        sources = {
            "model.fake": model,
            "golden/inputs.npz": inputs,
            "golden/expected.npz": expected,
        }
        manifest = Manifest(
            name=name,
            version=version,
            created_at=time.time(),
            files=tuple(FileEntry.of(path, source) for path, source in sources.items()),
            variants=(Variant("fake", "fp32", "model.fake"),),
            inputs=(TensorSignature("x", "FP32", (-1, 4)),),
            outputs=(TensorSignature("y", "FP32", (-1, 4)),),
            compatibility=Compatibility(),
            golden=Golden("golden/inputs.npz", "golden/expected.npz", 1e-5),
            batching=BatchingHints(8, (1, 4)),
        )
        out = self.dir / f"{name}-v{version}.bundle"
        digest = write_bundle(out, manifest, sources, signer or self.release_key)
        return BuiltBundle(out, name, version, digest.sha256, digest.size)

    def assign(
        self,
        *models: ModelAssignment,
        serial: int | None = None,
        expires_in: float = 3600.0,
        device_id: str | None = None,
        signer: PrivateKey | None = None,
    ) -> int:
        """Sign an assignment and write it where the agent looks; return its serial."""
        self.serial = serial if serial is not None else self.serial + 1
        now = time.time()
        assignment = Assignment(
            device_id or self.device_id, self.serial, now, now + expires_in, tuple(models)
        )
        self.assignment_path.write_bytes(sign_assignment(assignment, signer or self.assignment_key))
        return self.serial


def digest_of(path: Path) -> str:
    """SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
