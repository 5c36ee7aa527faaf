"""Requests aiohttp cannot parse are the client's fault: a debug line, not an error traceback.

A client that sends a 1 MiB header line or 10,000 headers gets 400 and its connection closed,
as it should, but aiohttp logs each one at ERROR with a 15-line traceback (it spares only a bad
method), so any client on the network can fill a server's log with "errors" at will. The chaos
suite's hostile-clients scenario found it. `quiet_malformed_requests` installs a filter on
aiohttp's server logger that drops those records, or, with debug logging on, keeps them as one
debug line without the traceback. Every other record of that logger passes unchanged.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

SERVER_LOGGER = "aiohttp.server"


class MalformedRequestFilter(logging.Filter):
    """Turns aiohttp's error record for an unparsable request into a debug line, or drops it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass every record but those for parse errors, which become debug lines."""
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg = f"{record.msg}: %s"
        record.args = (*(record.args if isinstance(record.args, tuple) else ()), error.message)
        record.exc_info, record.exc_text = None, None
        return True


def quiet_malformed_requests() -> None:
    """Install the filter on aiohttp's server logger, once per process."""
    logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, MalformedRequestFilter) for f in logger.filters):
        logger.addFilter(MalformedRequestFilter())
