"""The `edgefleet agent` command line, run as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

EDGEFLEET = [sys.executable, "-m", "shared.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextmanager
def serving(args: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `edgefleet agent serve` (output to `log`) until the test is done, then SIGTERM it."""
    with log.open("ab") as output:
        process = subprocess.Popen(
            [*EDGEFLEET, "agent", "serve", "--port", str(port), *args],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the agent never became ready"
            try:
                if get_json(f"http://127.0.0.1:{port}/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


def test_serve_restarts_from_the_cached_selection(sample_models: Path, tmp_path: Path) -> None:
    port = free_port()
    model = f"mlp={sample_models / 'mlp.onnx'},{sample_models / 'mlp.tflite'}"
    args = ["--model", model, "--state-dir", str(tmp_path), "--selection-budget", "0.3"]
    log = tmp_path / "agent.log"
    with serving(args, port, log) as first:
        status, config = get_json(f"http://127.0.0.1:{port}/v2/models/mlp/config")
        assert status == 200
        selection = config["edgefleet"]["selection"]
        assert selection["source"] == "measured"
        assert {m["file"] for m in selection["measurements"]} == {"mlp.onnx", "mlp.tflite"}
    assert first.returncode == 0, "SIGTERM must stop the agent cleanly"
    assert "mlp v1 ready on" in log.read_text()
    with serving(args, port, log):
        _, config = get_json(f"http://127.0.0.1:{port}/v2/models/mlp/config")
        assert config["edgefleet"]["selection"]["source"] == "cache"
        assert config["edgefleet"]["selection"]["chosen"] == selection["chosen"]


def test_serve_reports_bad_arguments(tmp_path: Path) -> None:
    result = subprocess.run(
        [*EDGEFLEET, "agent", "serve", "--model", f"m={tmp_path / 'missing.onnx'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "missing.onnx does not exist" in result.stderr
    result = subprocess.run(
        [*EDGEFLEET, "agent", "serve", "--model", "no-equals-sign"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "NAME=PATH" in result.stderr


def test_probe_json() -> None:
    result = subprocess.run(
        [*EDGEFLEET, "agent", "probe", "--json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    hardware = json.loads(result.stdout)["hardware"]
    assert hardware["logical_cores"] == os.cpu_count()
    assert {r["name"] for r in hardware["runtimes"]} == {"onnxruntime", "openvino", "tflite"}
    assert len(hardware["fingerprint"]) == 16


def test_probe_measures_a_model(sample_models: Path) -> None:
    result = subprocess.run(
        [
            *EDGEFLEET,
            "agent",
            "probe",
            "--model",
            str(sample_models / "cnn.onnx"),
            "--model",
            str(sample_models / "cnn.tflite"),
            "--budget",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "onnxruntime/CPU/cnn.onnx" in result.stdout
    assert "tflite/CPU/cnn.tflite" in result.stdout
    assert "chosen for latency:" in result.stdout
    assert "b1 p50 ms" in result.stdout


def test_help_lists_the_commands() -> None:
    result = subprocess.run([*EDGEFLEET, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("agent", "sample-models"):
        assert command in result.stdout


@pytest.mark.parametrize("command", [["agent", "serve"], ["agent", "probe"]])
def test_subcommand_help(command: list[str]) -> None:
    result = subprocess.run(
        [*EDGEFLEET, *command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "usage:" in result.stdout
