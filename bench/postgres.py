"""A throwaway PostgreSQL server for the tests and the chaos suite, on a loopback port.

The server lives in a temporary directory (data, log and unix socket), listens on a free
loopback port and trusts 127.0.0.1 only. initdb and postgres refuse to run as root, so under
root they run as Debian's `postgres` system user. `make system-deps` installs the binaries.

The tests take one server per session and a fresh database per test (`scratch_database`,
through `tests/postgres.py`); the chaos suite also `halt`s the server (a fast shutdown, or an
immediate one, which is a crash: the next start runs crash recovery) and `resume`s it on the
same data directory and port while a control plane uses it.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import asyncpg

DEBIAN_BINARIES = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
HOST = "127.0.0.1"
READY_SECONDS = 30.0
POLL_SECONDS = 0.05
STOP_SECONDS = 30.0
# How `halt` stops the postmaster: SIGINT is a fast shutdown (clients are disconnected, a
# checkpoint is written), SIGQUIT an immediate one (no checkpoint: crash recovery at start).
HALT_SIGNALS = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}
LOG_TAIL_CHARS = 4000
# Durability is worthless for a server that is deleted at the end of the session, unless the
# server is crashed on purpose: `start(durable=True)` keeps PostgreSQL's defaults, without
# which an immediate shutdown loses the last commits (synchronous_commit=off acknowledges a
# commit before its WAL is written).
SERVER_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresUnavailable(Exception):
    """The PostgreSQL binaries are missing, or the server would not start."""


def find_binaries() -> Path:
    """The directory holding initdb and postgres: from PATH, else Debian's newest version."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    candidates += sorted(DEBIAN_BINARIES.glob("*/bin"), key=_version, reverse=True)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    raise PostgresUnavailable(
        f"PostgreSQL's initdb and postgres are neither on PATH nor in {DEBIAN_BINARIES}/<ver>/bin;"
        " run `make system-deps` to install them"
    )


def _version(bin_directory: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in bin_directory.parent.name.split("."))
    except ValueError:
        return (0,)


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None (ourselves) unless we are root, whom PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root and there is no `{SUPERUSER}` user to run PostgreSQL as;"
            " run `make system-deps` (Debian's postgresql package creates it)"
        ) from None


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """A running throwaway server: `start` it, take `scratch_database`s from it, `stop` it."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        root: Path,
        port: int,
        binaries: Path,
        user: pwd.struct_passwd | None,
        settings: tuple[str, ...],
    ) -> None:
        self._process = process
        self._root = root
        self.port = port
        self._binaries = binaries
        self._user = user
        self._settings = settings

    @classmethod
    def start(cls, durable: bool = False) -> PostgresServer:
        """initdb a new cluster in a temporary directory, start it and wait until it accepts.

        With `durable`, PostgreSQL's own fsync and commit settings, for a server that is
        crashed on purpose (`halt("immediate")`) and must keep every acknowledged commit.
        """
        binaries = find_binaries()
        user = _server_user()
        root = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
        server: PostgresServer | None = None
        try:
            if user is not None:
                os.chown(root, user.pw_uid, user.pw_gid)
            _initdb(binaries, root, user)
            port = _free_loopback_port()
            settings = () if durable else SERVER_SETTINGS
            process = _launch(binaries, root, user, port, settings)
            server = cls(process, root, port, binaries, user, settings)
            server._wait_until_accepting()
        except BaseException:
            if server is not None:
                server.stop()
            else:
                shutil.rmtree(root, ignore_errors=True)
            raise
        return server

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database` on this server."""
        return f"postgresql+asyncpg://{SUPERUSER}@{HOST}:{self.port}/{database}"

    async def create_database(self, name: str) -> str:
        """Create an empty database; return its URL."""
        await self._administer(f'CREATE DATABASE "{name}"')
        return self.url(name)

    @asynccontextmanager
    async def scratch_database(self) -> AsyncIterator[str]:
        """A new empty database, yielded as its URL and dropped (connections and all) after."""
        name = f"test_{secrets.token_hex(8)}"
        await self.create_database(name)
        try:
            yield self.url(name)
        finally:
            # FORCE ends connections a test left open (PostgreSQL 13+).
            await self._administer(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def halt(self, mode: str = "fast") -> None:
        """Stop the server (`fast` or `immediate`, see `HALT_SIGNALS`), keeping its data."""
        if self._process.poll() is not None:
            return
        self._process.send_signal(HALT_SIGNALS[mode])
        try:
            self._process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def resume(self) -> None:
        """Start the halted server again on the same data directory and port."""
        if self._process.poll() is None:
            raise PostgresUnavailable("the server is still running; halt it first")
        self._process = _launch(self._binaries, self._root, self._user, self.port, self._settings)
        self._wait_until_accepting()

    def stop(self) -> None:
        """Fast shutdown (clients disconnected, no checkpoint wait), then remove everything."""
        try:
            self.halt("fast")
        finally:
            shutil.rmtree(self._root, ignore_errors=True)

    async def _administer(self, statement: str) -> None:
        connection = await asyncpg.connect(
            host=HOST, port=self.port, user=SUPERUSER, database="postgres"
        )
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    def _wait_until_accepting(self) -> None:
        # A loop of our own, never set as current: pytest-asyncio owns the tests' loops.
        with closing(asyncio.new_event_loop()) as loop:
            loop.run_until_complete(self._poll_until_accepting(time.monotonic() + READY_SECONDS))

    async def _poll_until_accepting(self, deadline: float) -> None:
        while True:
            if (status := self._process.poll()) is not None:
                raise PostgresUnavailable(
                    f"PostgreSQL exited with status {status} before accepting connections;"
                    f" its log:\n{self._log_tail()}"
                )
            try:
                connection = await asyncpg.connect(
                    host=HOST, port=self.port, user=SUPERUSER, database="postgres", timeout=5
                )
            # Refused until the socket is bound, then "the database system is starting up".
            except (OSError, asyncpg.PostgresError) as error:
                last_error: Exception = error
            else:
                await connection.close()
                return
            if time.monotonic() >= deadline:
                raise PostgresUnavailable(
                    f"PostgreSQL did not accept connections on {HOST}:{self.port} within"
                    f" {READY_SECONDS:.0f} s (last error: {last_error!r}); its log:\n"
                    f"{self._log_tail()}"
                )
            await asyncio.sleep(POLL_SECONDS)

    def _log_tail(self) -> str:
        try:
            return (self._root / "server.log").read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError as error:
            return f"<cannot read the log: {error}>"


def _identity(user: pwd.struct_passwd | None) -> tuple[int | None, int | None, list[int] | None]:
    """subprocess's user, group and extra_groups: `user` without any of root's groups."""
    if user is None:
        return None, None, None
    return user.pw_uid, user.pw_gid, []


def _initdb(binaries: Path, root: Path, user: pwd.struct_passwd | None) -> None:
    data = root / "data"
    uid, gid, groups = _identity(user)
    result = subprocess.run(
        [
            str(binaries / "initdb"),
            f"--pgdata={data}",
            f"--username={SUPERUSER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ],
        cwd=root,
        capture_output=True,
        check=False,
        user=uid,
        group=gid,
        extra_groups=groups,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace")
        raise PostgresUnavailable(f"initdb failed with status {result.returncode}:\n{output}")
    # Only TCP from loopback, and no password; the socket directory is private to the server.
    hba = data / "pg_hba.conf"
    hba.write_text(f"host all all {HOST}/32 trust\n")
    if user is not None:
        os.chown(hba, user.pw_uid, user.pw_gid)


def _launch(
    binaries: Path,
    root: Path,
    user: pwd.struct_passwd | None,
    port: int,
    durability: tuple[str, ...],
) -> subprocess.Popen[bytes]:
    settings = [f"listen_addresses={HOST}", f"unix_socket_directories={root}", *durability]
    command = [str(binaries / "postgres"), "-D", str(root / "data"), "-p", str(port)]
    for setting in settings:
        command += ["-c", setting]
    uid, gid, groups = _identity(user)
    with (root / "server.log").open("ab") as log:  # a resumed server appends
        return subprocess.Popen(
            command,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
