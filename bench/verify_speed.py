"""Verification speed: `verify_bundle` and `extract_bundle` against plain SHA-256 of the archive.

All three read the same archive, which was just written and so sits in the page cache; one
warm-up round first makes sure every figure is a warm-cache figure. Every extraction time is
kept as well, the warm-up's included: writing and fsyncing 256 MB varies far more from one
round to the next than reading from the cache does. The rounds interleave
the three so that noise on a shared machine hits them alike; each figure is the median.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench import BenchError
from shared.bundle import extract_bundle, verify_bundle
from shared.keylist import TrustStore

MB = 1e6


@dataclass(frozen=True)
class VerifySpeed:
    """Median seconds over the same archive, and its size in bytes."""

    size: int
    rounds: int
    sha256_s: float
    verify_s: float
    extract_s: float
    every_extract_s: tuple[float, ...]  # every round's extraction, the warm-up round first

    def mb_s(self, seconds: float) -> float:
        """MB/s (10^6 bytes) of the archive read in `seconds`."""
        return self.size / MB / seconds


def sha256_archive(archive: Path) -> str:
    """The baseline: `hashlib.file_digest` over the whole file."""
    with archive.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def measure_verification(
    archive: Path, trust: TrustStore, scratch: Path, rounds: int
) -> VerifySpeed:
    """Time SHA-256, verification and extraction (into a fresh directory each time)."""
    scratch.mkdir(parents=True, exist_ok=True)
    sha256_s, verify_s, extract_s, every_extract_s = [], [], [], []
    for round_number in range(rounds + 1):  # round 0 is the warm-up
        dest = scratch / f"extract-{round_number}"
        started = time.perf_counter()
        digest = sha256_archive(archive)
        hashed = time.perf_counter()
        verified = verify_bundle(archive, trust)
        checked = time.perf_counter()
        extract_bundle(archive, dest, trust)
        extracted = time.perf_counter()
        shutil.rmtree(dest)
        if verified.digest != digest:
            raise BenchError(f"verify_bundle found sha256 {verified.digest}, hashlib {digest}")
        every_extract_s.append(extracted - checked)
        if round_number:
            sha256_s.append(hashed - started)
            verify_s.append(checked - hashed)
            extract_s.append(extracted - checked)
    return VerifySpeed(
        size=archive.stat().st_size,
        rounds=rounds,
        sha256_s=statistics.median(sha256_s),
        verify_s=statistics.median(verify_s),
        extract_s=statistics.median(extract_s),
        every_extract_s=tuple(every_extract_s),
    )
