"""`edgefleet cp ...` end to end through `shared.cli.main`, on SQLite in a temporary directory."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from contextlib import closing, redirect_stderr, redirect_stdout
from pathlib import Path

from control_plane.db.engine import create_engine_for, default_database_url, open_session
from control_plane.tokens import authenticate
from shared.cli import main


def run(*argv: str) -> tuple[int, str, str]:
    """Run the command line in-process; return the exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


async def _authenticates(data: Path, secret: str) -> bool:
    engine = create_engine_for(default_database_url(data))
    try:
        async with open_session(engine) as session:
            return await authenticate(session, secret) is not None
    finally:
        await engine.dispose()


def _audit_rows(data: Path) -> list[tuple[str, str, str, object, object]]:
    with closing(sqlite3.connect(data / "control-plane.db")) as db:
        rows = db.execute("SELECT actor, action, target, before, after FROM audit_log ORDER BY id")
        return [
            (a, b, c, json.loads(d) if d else None, json.loads(e) if e else None)
            for a, b, c, d, e in rows
        ]


def test_migrate_create_list_revoke(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    code, _, err = run("cp", "migrate", "--data", str(data))
    assert code == 0, err
    assert "newest schema" in err

    code, out, err = run("cp", "token", "create", "--data", str(data), "--role", "operator",
                         "--name", "ci")  # fmt: skip
    assert code == 0, err
    secret = out.strip()
    assert secret.startswith("ef_")
    assert "cannot be shown again" in err
    assert asyncio.run(_authenticates(data, secret))

    code, out, err = run("cp", "token", "list", "--data", str(data))
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "ROLE"]
    assert row.split()[:3] == ["1", "ci", "operator"]
    assert secret not in out
    assert secret.removeprefix("ef_") not in out

    code, _, err = run("cp", "token", "revoke", "--data", str(data), "1")
    assert code == 0, err
    assert not asyncio.run(_authenticates(data, secret))
    code, out, _ = run("cp", "token", "revoke", "--data", str(data), "1")
    assert code == 0
    assert "already revoked" in out

    (create, revoke) = _audit_rows(data)
    assert create[:4] == ("cli", "token.create", "token:1", None)
    assert create[4] == {"id": 1, "name": "ci", "role": "operator", "revoked_at": None}
    assert revoke[:3] == ("cli", "token.revoke", "token:1")
    assert isinstance(revoke[3], dict)
    assert revoke[3]["revoked_at"] is None
    assert isinstance(revoke[4], dict)
    assert revoke[4]["revoked_at"] is not None


def test_token_commands_refuse_a_database_that_was_never_migrated(tmp_path: Path) -> None:
    code, _, err = run("cp", "token", "list", "--data", str(tmp_path))
    assert code == 1
    assert "edgefleet cp migrate" in err
    assert not (tmp_path / "control-plane.db").exists()


def test_revoking_an_unknown_id_fails_clearly(tmp_path: Path) -> None:
    assert run("cp", "migrate", "--data", str(tmp_path))[0] == 0
    code, _, err = run("cp", "token", "revoke", "--data", str(tmp_path), "99")
    assert code == 1
    assert "error: no operator token has id 99" in err
    assert _audit_rows(tmp_path) == []
