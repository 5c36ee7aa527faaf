"""The model a batch run scores with: local files or a signed bundle, and the backend chosen.

`--model NAME=PATH[,PATH...]` names local files, each a variant, as `agent serve` does. A
`--bundle` is verified against a trusted key list before anything in it is used, and extracted
into a temporary directory that is removed afterwards; only `--insecure` skips the check, and
then it is still unpacked with tarfile's `data` filter (no links, devices or paths outside).
The backend is chosen by `AcceleratorSelector`, measured at the batch size the run will use.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.batch_errors import BatchError
from agent.batch_journal import model_digest
from agent.hardware import probe_hardware
from agent.runtimes.base import RuntimeOptions
from agent.runtimes.registry import RuntimeRegistry
from agent.selection import AcceleratorSelector, Selection, SelectionRequest
from agent.selection_cache import SelectionCache
from shared.bundle import FILES_DIR, extract_bundle, read_unverified
from shared.key_directory import KeyDirectory
from shared.keylist import TrustStore
from shared.keys import load_public
from shared.manifest import Manifest


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """The files of one model (its variants) and the digest that identifies them."""

    name: str
    paths: tuple[Path, ...]
    digest: str
    max_batch: int | None = None  # a bundle's `batching.max_batch_size`


@dataclass(frozen=True, slots=True)
class SelectionOptions:
    """How to choose the backend."""

    policy: str = "throughput"
    pin: str | None = None
    budget_s: float = 3.0
    threads: int = 0  # intra-op threads; 0 = the runtime's default
    state_dir: Path | None = None  # keeps the selection cache between runs


def parse_model_option(value: str) -> ModelFiles:
    """Read `NAME=PATH[,PATH...]` and hash the files; raise `BatchError` if one is missing."""
    name, sep, rest = value.partition("=")
    paths = tuple(Path(p) for p in rest.split(",") if p)
    if not sep or not name or not paths:
        raise BatchError(f"--model expects NAME=PATH[,PATH...], got {value!r}")
    for path in paths:
        if not path.is_file():
            raise BatchError(f"model file {path} does not exist")
    return ModelFiles(name, tuple(p.resolve() for p in paths), model_digest(paths))


def load_trust(keys: Path | None, root_key: Path | None, keylist: Path | None) -> TrustStore:
    """The key list to verify bundles with: a key directory, or a root key and key list."""
    if keys is not None:
        return KeyDirectory(keys).trust_store()
    if root_key is None or keylist is None:
        raise BatchError(
            "a bundle is verified before use: give --keys DIR, or --root-key FILE and "
            "--keylist FILE (or --insecure to score with an unverified bundle)"
        )
    try:
        document = keylist.read_bytes()
    except OSError as exc:
        raise BatchError(f"{keylist}: cannot read: {exc.strerror or exc}") from exc
    return TrustStore.bootstrap(load_public(root_key), document)


@contextmanager
def bundle_model(archive: Path, trust: TrustStore | None) -> Iterator[ModelFiles]:
    """Extract a bundle (verified unless `trust` is None) and yield its model files."""
    if not archive.is_file():
        raise BatchError(f"bundle {archive} does not exist")
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-batch-"))
    try:
        dest = workdir / "bundle"
        if trust is not None:
            verified = extract_bundle(archive, dest, trust)
            manifest, digest, files = verified.manifest, verified.digest, dest
        else:
            manifest, digest = _extract_unverified(archive, dest)
            files = dest / FILES_DIR
        paths = tuple(files / variant.file for variant in manifest.variants)
        yield ModelFiles(manifest.name, paths, digest, manifest.batching.max_batch_size)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _extract_unverified(archive: Path, dest: Path) -> tuple[Manifest, str]:
    """Unpack without checking signatures or hashes (only for `--insecure`)."""
    manifest = read_unverified(archive).manifest
    with archive.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f"{FILES_DIR}/")]
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise BatchError(f"{archive}: cannot unpack the bundle: {exc}") from exc
    return manifest, digest


def select_backend(files: ModelFiles, batch_size: int, options: SelectionOptions) -> Selection:
    """Measure the candidates at `batch_size` (or load the pinned one); blocking."""
    registry = RuntimeRegistry.default()
    cache_path = options.state_dir / "selection-cache.json" if options.state_dir else None
    selector = AcceleratorSelector(
        registry,
        RuntimeOptions(intra_op_threads=options.threads, max_batch_size=batch_size),
        SelectionCache(cache_path),
        probe_hardware(registry, list_devices=False).fingerprint(),
    )
    request = SelectionRequest(
        model=files.name,
        paths=files.paths,
        policy=options.policy,
        max_batch=batch_size,
        pin=options.pin,
        budget_s=options.budget_s,
    )
    return selector.select(request)
