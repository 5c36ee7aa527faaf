"""deploy/container/ checked without a Docker engine: the Dockerfiles and the start script.

No image is built here. The Dockerfiles lint clean with hadolint and keep the rules of issue 7
(multi-stage, slim or CUDA runtime base, fixed non-root user, Python health check, volume,
`edgefleet` entrypoint, only context files .dockerignore lets through); the agent's start
script lints clean with shellcheck and, run against a fake `edgefleet`, enrolls only when the
state directory holds no identity and keeps the token out of the running agent.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.deploy_files import (
    DEPLOY,
    ROOT,
    Instruction,
    dockerfile_instructions,
    final_stage,
    find_tool,
)

DOCKERFILES = sorted((DEPLOY / "container").glob("*.Dockerfile"))
START_SCRIPT = DEPLOY / "container" / "agent-start.sh"

# --- Dockerfiles ------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' on x86-64 or macOS)")
    done = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stdout, done.stdout


@dataclass(frozen=True)
class ImageRules:
    """What one image must look like."""

    base: str
    extras: str
    port: int
    health_path: str
    volume: str


IMAGES = {
    "agent.Dockerfile": ImageRules(
        "python:3.11-slim-bookworm",
        "openvino,tflite",
        8000,
        "/v2/health/live",
        "/var/lib/edgefleet",
    ),
    "agent-gpu.Dockerfile": ImageRules(
        "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04",
        "gpu",
        8000,
        "/v2/health/live",
        "/var/lib/edgefleet",
    ),
    "control-plane.Dockerfile": ImageRules(
        "python:3.11-slim-bookworm",
        "control-plane",
        8080,
        "/api/v1/health",
        "/var/lib/edgefleet-cp",
    ),
}


def test_every_dockerfile_has_rules() -> None:
    assert {p.name for p in DOCKERFILES} == set(IMAGES)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile_keeps_the_image_rules(name: str) -> None:
    rules = IMAGES[name]
    instructions = dockerfile_instructions(DEPLOY / "container" / name)
    froms = [i.arguments for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: the wheel is built in a stage of its own"
    assert froms[0].startswith("python:3.11-slim-bookworm AS ")
    assert froms[-1] == rules.base
    assert "slim" in rules.base or "-runtime-" in rules.base  # no devel or full images
    final = final_stage(instructions)
    assert last(final, "USER") == "10001:10001"
    assert last(final, "EXPOSE") == str(rules.port)
    assert last(final, "VOLUME") == f'["{rules.volume}"]'
    assert last(final, "ENTRYPOINT") == '["edgefleet"]'
    health = last(final, "HEALTHCHECK")
    assert '"/opt/edgefleet/bin/python", "/usr/local/bin/edgefleet-healthcheck"' in health
    assert f'"{rules.port}", "{rules.health_path}"]' in health
    install = " ".join(i.arguments for i in final if i.keyword == "RUN")
    assert f"edgefleet-*.whl')[{rules.extras}]" in install
    assert "--no-cache-dir" in install
    for copied in copied_sources(instructions):
        assert (ROOT / copied).exists(), copied
        assert not docker_ignores(copied), f"{copied} is left out by .dockerignore"


def last(instructions: list[Instruction], keyword: str) -> str:
    """The arguments of the last instruction of a kind."""
    return [i.arguments for i in instructions if i.keyword == keyword][-1]


def copied_sources(instructions: list[Instruction]) -> Iterator[str]:
    """Paths COPY takes from the build context (not from another stage)."""
    for instruction in instructions:
        if instruction.keyword == "COPY" and "--from=" not in instruction.arguments:
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            yield from words[:-1]


def docker_ignores(path: str) -> bool:
    """Whether the repository's .dockerignore leaves `path` out of the build context."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#") or pattern.startswith("**"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        if any(Path(c).match(pattern) and c.count("/") == pattern.count("/") for c in candidates):
            ignored = not negated
    return ignored


# --- The agent's start script -----------------------------------------------------------------


def test_start_script_lints_clean() -> None:
    shellcheck = find_tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install -e '.[dev]' on x86-64 or macOS)")
    done = subprocess.run([shellcheck, "--shell=sh", str(START_SCRIPT)], capture_output=True)
    assert done.returncode == 0, done.stdout.decode()


FAKE_EDGEFLEET = """#!/bin/sh
# Records each call; `agent enroll` also writes identity.json into --state, as enrolling does.
printf '%s|token=%s\\n' "$*" "${EDGEFLEET_ENROLL_TOKEN:-}" >>"$FAKE_LOG"
if [ "$1 $2" = "agent enroll" ]; then
    while [ "$#" -gt 0 ]; do
        if [ "$1" = "--state" ]; then echo '{}' >"$2/identity.json"; fi
        shift
    done
fi
"""


@dataclass
class StartScript:
    """agent-start.sh with a fake `edgefleet` first on PATH."""

    state: Path
    log: Path
    env: dict[str, str]

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run the script; the fake's calls are in `calls()`."""
        return subprocess.run(
            ["sh", str(START_SCRIPT), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )

    def calls(self) -> list[str]:
        """One line per `edgefleet` call: arguments, then `|token=` and the token it saw."""
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def start_script(tmp_path: Path) -> StartScript:
    """A state directory, a fake edgefleet, and the environment the image provides."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "edgefleet"
    fake.write_text(FAKE_EDGEFLEET)
    fake.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    log = tmp_path / "calls.log"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        "EDGEFLEET_AGENT_STATE_DIR": str(state),
        "EDGEFLEET_ENROLL_URL": "https://cp.example.com",
    }
    return StartScript(state, log, env)


def test_start_script_enrolls_once_then_runs(start_script: StartScript) -> None:
    done = start_script.run(
        "--port",
        "8123",
        EDGEFLEET_ENROLL_TOKEN="efe_secret",
        EDGEFLEET_AGENT_DEVICE_ID="edge-7",
        EDGEFLEET_ENROLL_ROOT_KEY="/etc/edgefleet/root.pub",
    )
    assert done.returncode == 0, done.stderr
    state = start_script.state
    assert start_script.calls() == [
        f"agent enroll --cp https://cp.example.com --state {state} --device-id edge-7 "
        "--root-key /etc/edgefleet/root.pub|token=efe_secret",
        "agent run --port 8123|token=",  # the token stays out of the running agent
    ]
    again = start_script.run(EDGEFLEET_ENROLL_TOKEN="efe_secret")
    assert again.returncode == 0, again.stderr
    assert start_script.calls()[2:] == ["agent run|token="]


def test_start_script_reads_the_token_from_a_file(
    start_script: StartScript, tmp_path: Path
) -> None:
    token_file = tmp_path / "node-1"
    token_file.write_text("efe_from_file\n")
    done = start_script.run(EDGEFLEET_ENROLL_TOKEN_FILE=str(token_file))
    assert done.returncode == 0, done.stderr
    assert start_script.calls()[0].endswith("|token=efe_from_file")
    assert "--device-id" not in start_script.calls()[0]  # enroll defaults to the host name


def test_start_script_without_identity_or_token_stops(start_script: StartScript) -> None:
    done = start_script.run(EDGEFLEET_ENROLL_TOKEN_FILE="/nonexistent/token")
    assert done.returncode == 78  # EX_CONFIG: a restart cannot help
    assert "EDGEFLEET_ENROLL_TOKEN" in done.stderr
    assert start_script.calls() == []
