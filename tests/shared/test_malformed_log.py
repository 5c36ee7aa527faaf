"""A request aiohttp cannot parse is answered 400 without an error traceback in the agent's log.

aiohttp logs each such request at ERROR with a traceback, so before `malformed_log` any client
could fill the log with "errors" by sending oversized or too many headers (found by the chaos
suite's hostile-clients scenario). The agent's real `serve()` runs in a thread here.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentSettings, SelectionSettings
from agent.model import ModelSpec
from shared.malformed_log import SERVER_LOGGER, MalformedRequestFilter
from tests.agent.fakes import fake_registry, write_fake_model
from tests.agent.harness import AgentThread, running_agent

LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentThread]:
    registry, _ = fake_registry()
    model = write_fake_model(tmp_path / "echo.fake")
    settings = AgentSettings(
        state_dir=tmp_path / "state",
        selection=SelectionSettings(budget_s=0.1),
        models=(ModelSpec("echo", 1, (model,), pin="fake/CPU"),),
    )
    try:
        with running_agent(settings, registry) as running:
            yield running
    finally:  # the filter is process-wide: leave aiohttp's logger as other tests expect it
        logger = logging.getLogger(SERVER_LOGGER)
        for installed in [f for f in logger.filters if isinstance(f, MalformedRequestFilter)]:
            logger.removeFilter(installed)


def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except ConnectionResetError:  # the server may close before reading everything we sent
            pass
        return answer


@pytest.mark.parametrize(
    "request_bytes",
    [
        LIVE + b"".join(b"X-%d: v\r\n" % i for i in range(1000)) + b"\r\n",
        LIVE + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    ],
    ids=["too many headers", "header line too long"],
)
def test_a_malformed_request_gets_400_and_no_error_in_the_log(
    agent: AgentThread, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    answer = exchange(agent.port, request_bytes)

    assert answer.startswith(b"HTTP/1.0 400 ") or answer.startswith(b"HTTP/1.1 400 "), answer
    assert [r for r in caplog.records if r.name == SERVER_LOGGER] == []


def test_with_debug_logging_the_request_is_one_line_without_traceback(
    agent: AgentThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=SERVER_LOGGER)

    exchange(agent.port, LIVE + b"".join(b"X-%d: v\r\n" % i for i in range(1000)) + b"\r\n")

    records = [r for r in caplog.records if r.name == SERVER_LOGGER]
    assert [r.levelno for r in records] == [logging.DEBUG]
    assert records[0].exc_info is None
    assert "Too many headers" in records[0].getMessage()


def test_other_records_of_the_server_logger_pass_unchanged() -> None:
    record = logging.LogRecord(SERVER_LOGGER, logging.ERROR, __file__, 1, "boom", (), None)

    assert MalformedRequestFilter().filter(record)
    assert record.levelno == logging.ERROR
