"""A throwaway PostgreSQL server for the tests: one per session, a fresh database per test.

The server itself lives in `bench.postgres`, which the chaos suite shares (it also halts and
resumes one under a running control plane); this module keeps the tests' import path.
"""

from __future__ import annotations

from bench.postgres import PostgresServer, PostgresUnavailable

__all__ = ["PostgresServer", "PostgresUnavailable"]
