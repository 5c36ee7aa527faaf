"""The operator's side of the update scenarios: keys, signed releases of the MLP, golden vectors.

`build_kit` writes the sample models, then signs one release per version with
`bench.releases.ReleaseDesk` (FP32 ONNX only: one variant to measure keeps every activation and
restart short on two cores). A release may carry random padding (`weights.bin`), to make its
download last, or to make it too large for a small disk. The golden vectors are read from each
verified bundle, as the agent reads them, so an answer is checked against what was signed.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.sample_models import write_sample_models
from bench import BenchError
from bench.chaos.device import Golden
from bench.releases import DEVICE_ID, MODEL, Release, ReleaseDesk, write_weights

__all__ = ["DEVICE_ID", "MODEL", "ChaosRelease", "Kit", "build_kit"]


@dataclass(frozen=True)
class ChaosRelease:
    """A signed release and its golden vectors."""

    release: Release
    golden: Golden

    @property
    def version(self) -> int:
        """The model version."""
        return self.release.version

    @property
    def digest(self) -> str:
        """The bundle's SHA-256."""
        return self.release.digest

    @property
    def size(self) -> int:
        """The bundle's size in bytes."""
        return self.release.size


@dataclass(frozen=True)
class Kit:
    """Keys, the desk that signs assignments, and the releases by version."""

    desk: ReleaseDesk
    releases: dict[int, ChaosRelease]

    @property
    def keys(self) -> Path:
        """The key directory (`root.pub`, `keylist.json`) a device trusts."""
        return self.desk.keys.path

    @property
    def goldens(self) -> dict[int, Golden]:
        """Each version's golden vectors."""
        return {version: r.golden for version, r in self.releases.items()}

    @property
    def bundles(self) -> Path:
        """The directory the signed bundles are in (what a bundle server serves)."""
        return self.desk.dir


def build_kit(work: Path, padding: Mapping[int, int]) -> Kit:
    """Sign one release per version of `padding` (version -> bytes of random weights)."""
    models_dir = work / "models"
    index = write_sample_models(models_dir)
    sample = next(m for m in index.models if m.name == MODEL)
    onnx = tuple(f for f in sample.files if f.format == "onnx" and f.precision == "fp32")
    if not onnx:
        raise BenchError("the sample MLP has no FP32 ONNX file")
    desk = ReleaseDesk(work, models_dir, dataclasses.replace(sample, files=onnx))
    releases: dict[int, ChaosRelease] = {}
    for version, extra in sorted(padding.items()):
        weights = None
        if extra:
            path = work / f"weights-v{version}.bin"
            weights = (path, write_weights(path, extra, seed=version))
        release = desk.build(version, weights)
        if weights is not None:
            weights[0].unlink()  # the bundle holds a copy
        files = work / f"golden-v{version}"
        verified, golden = Golden.of_bundle(release.path, files, desk.trust)
        shutil.rmtree(files)
        if verified.digest != release.digest:
            raise BenchError(f"v{version}: the bundle changed after it was signed")
        releases[version] = ChaosRelease(release, golden)
    return Kit(desk, releases)
