"""Inference traffic against an agent during a fault: one request at a time, counted by phase.

A scenario names the phase it is in (`before`, `outage`, `after` ...) and the thread counts
the requests that got the right answer and those that failed (a refused connection, an HTTP
error, or an answer that differs from the model's reference) under that phase, so "did
serving go on through the outage" is a number.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter

from bench import BenchError
from bench.payloads import Payload, check_answer

PAUSE_S = 0.02  # between requests: about 40 a second, a little load beside the reporting
MAX_ERRORS_KEPT = 5


class InferenceTraffic:
    """A thread that checks inference answers of the agent on `port` until stopped."""

    def __init__(self, port: int, payload: Payload, pause_s: float = PAUSE_S) -> None:
        self.port = port
        self.payload = payload
        self.pause_s = pause_s
        self.phase = "before"  # set by the scenario; read by the thread
        self.ok: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.errors: list[str] = []  # the first few failures, for the notes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference-traffic", daemon=True)

    def start(self) -> None:
        """Start sending."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sending and wait for the request in flight."""
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.pause_s):
            phase = self.phase
            try:
                check_answer(self.port, self.payload)
            except (OSError, http.client.HTTPException, BenchError) as error:
                self.failed[phase] += 1
                if len(self.errors) < MAX_ERRORS_KEPT:
                    self.errors.append(f"{phase}: {error}")
            else:
                self.ok[phase] += 1
