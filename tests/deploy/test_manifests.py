"""deploy/ checked offline: YAML, the Kubernetes manifests and the Compose file.

No cluster and no Docker engine run here. What is checked instead: every YAML file under
deploy/ parses; every Kubernetes object validates against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields fail) for the oldest and newest release named
below; the Kustomize overlays reference only files that exist and, where kubectl is installed,
build (`kubectl kustomize`) into valid objects with 3 control-plane replicas, probes, resource
limits and locked-down non-root pods; the Compose file validates against the Compose
specification's schema (check-jsonschema) and runs the four services with health checks; and
every setting these files and the Dockerfiles set is one the agent and the control plane accept.
Dockerfiles and the start script: test_containers.py; the dashboard: test_agent_endpoints.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from agent.config import load_settings
from control_plane.settings import ControlPlaneSettings, InvalidSettings
from tests.deploy.deploy_files import (
    DEPLOY,
    K8S,
    OVERLAYS,
    ROOT,
    Kustomization,
    by_kind_and_name,
    dockerfile_instructions,
    final_stage,
    find_tool,
    kustomize_build,
    load_documents,
    pod_specs,
)

# The oldest Kubernetes release the manifests promise to work on, and the newest known.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
COMPOSE = DEPLOY / "compose.yaml"


def base_objects() -> list[dict[str, Any]]:
    """The base's objects as written (no Kustomize transformation)."""
    files = Kustomization.read(K8S / "base").object_files()
    return [obj for path in files for obj in load_documents(path)]


def rendered(overlay: str) -> list[dict[str, Any]]:
    """An overlay built by kubectl; the test is skipped where kubectl is not installed."""
    objects = kustomize_build(K8S / "overlays" / overlay)
    if objects is None:
        pytest.skip("kubectl is not installed: overlays are checked file by file only")
    return objects


# --- YAML and Kubernetes ----------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    documents = load_documents(path)
    assert documents, f"{path} holds no document"
    assert all(isinstance(d, dict) for d in documents)


@pytest.mark.parametrize("overlay", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_kustomizations_reference_only_existing_files(overlay: str) -> None:
    assert Kustomization.read(K8S / overlay).missing() == []


def test_object_files_validate_against_the_kubernetes_schemas() -> None:
    files = {p for o in OVERLAYS for p in Kustomization.read(K8S / "overlays" / o).object_files()}
    checked = 0
    for path in sorted(files):
        for obj in load_documents(path):
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(obj, version, strict=True)
            checked += 1
    assert checked >= 15


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_into_valid_objects(overlay: str) -> None:
    objects = rendered(overlay)
    for obj in objects:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "edgefleet", obj["metadata"]["name"]
    assert_edgefleet_objects(objects)


def test_base_holds_the_required_objects() -> None:
    assert_edgefleet_objects(base_objects())


def test_dev_overlay_is_self_contained() -> None:
    objects = by_kind_and_name(rendered("dev"))
    assert ("StatefulSet", "edgefleet-postgres") in objects
    assert ("Service", "edgefleet-postgres") in objects
    assert ("Deployment", "edgefleet-mosquitto") in objects
    assert ("Service", "edgefleet-mqtt") in objects
    db = [o for (kind, name), o in objects.items() if name.startswith("edgefleet-cp-db")]
    assert [o["kind"] for o in db] == ["Secret"]


def test_production_overlay_uses_external_services() -> None:
    objects = by_kind_and_name(rendered("production"))
    assert not any(kind == "StatefulSet" for kind, _ in objects)
    config = objects[("ConfigMap", "edgefleet-cp-config")]["data"]
    assert config["EDGEFLEET_CP_MQTT_URL"].startswith("mqtts://emqx")
    assert config["EDGEFLEET_CP_PUBLIC_URL"].startswith("https://")
    gpu = objects[("DaemonSet", "edgefleet-agent-gpu")]["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def assert_edgefleet_objects(objects: list[dict[str, Any]]) -> None:
    """The objects issue 7 asks for, each with probes, limits and a non-root user."""
    found = by_kind_and_name(objects)
    cp = found[("Deployment", "edgefleet-control-plane")]
    assert cp["spec"]["replicas"] == 3
    for kind in ("Service", "Ingress", "PodDisruptionBudget"):
        assert (kind, "edgefleet-control-plane") in found, kind
    pdb = found[("PodDisruptionBudget", "edgefleet-control-plane")]["spec"]
    assert pdb["selector"]["matchLabels"] == cp["spec"]["selector"]["matchLabels"]
    assert pdb["minAvailable"] < cp["spec"]["replicas"]
    migrate = found[("Job", "edgefleet-cp-migrate")]["spec"]["template"]["spec"]
    assert migrate["initContainers"][0]["args"][:2] == ["cp", "migrate"]

    server = cp["spec"]["template"]["spec"]["containers"][0]
    assert probe_path(server, "liveness") == probe_path(server, "readiness") == "/api/v1/health"
    db_url = next(e for e in server["env"] if e["name"] == "EDGEFLEET_CP_DATABASE_URL")
    assert db_url["valueFrom"]["secretKeyRef"]["name"].startswith("edgefleet-cp-db")
    volumes = {v["name"]: v for v in cp["spec"]["template"]["spec"]["volumes"]}
    assert volumes["keys"]["secret"]["secretName"] == "edgefleet-cp-keys"

    agent_pod = found[("DaemonSet", "edgefleet-agent")]["spec"]["template"]["spec"]
    agent = agent_pod["containers"][0]
    assert agent["command"] == ["edgefleet-agent-start"]
    assert probe_path(agent, "liveness") == "/v2/health/live"
    assert probe_path(agent, "readiness") == "/v2/health/ready"
    state = next(v for v in agent_pod["volumes"] if v["name"] == "state")
    assert state["hostPath"]["path"] == "/var/lib/edgefleet"

    for where, pod in pod_specs(objects):
        assert_pod_is_locked_down(where, pod, long_running=not where.startswith("Job/"))


def probe_path(container: dict[str, Any], kind: str) -> str:
    """The HTTP path of a container's liveness or readiness probe."""
    return str(container[f"{kind}Probe"]["httpGet"]["path"])


def assert_pod_is_locked_down(where: str, pod: dict[str, Any], long_running: bool) -> None:
    """Non-root, no privileges, read-only root, limits; probes on long-running containers."""
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True, where
    assert context["runAsUser"] > 0, where
    assert context["seccompProfile"]["type"] == "RuntimeDefault", where
    assert pod["automountServiceAccountToken"] is False, where
    # Service links put *_SERVICE_HOST variables into the environment; EdgeFleet's settings
    # loaders refuse EDGEFLEET_AGENT_* and EDGEFLEET_CP_* names that are not settings.
    assert pod["enableServiceLinks"] is False, where
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        name = f"{where} {container['name']}"
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert security.get("runAsNonRoot", True) is True, name
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
    if long_running:
        for container in pod["containers"]:
            assert "livenessProbe" in container, where
            assert "readinessProbe" in container, where


def test_migration_job_makes_the_device_ca(tmp_path: Path) -> None:
    """The Job's CA step, run as written, with this checkout's control_plane package."""
    (job,) = [o for o in base_objects() if o["kind"] == "Job"]
    (init_ca,) = job["spec"]["template"]["spec"]["containers"]
    command = init_ca["command"]
    assert command[:2] == ["python", "-c"]
    ca = tmp_path / "ca"
    for _ in range(2):  # the second run loads what the first one made
        done = subprocess.run(
            [sys.executable, "-c", command[2], str(ca)], capture_output=True, text=True, cwd=ROOT
        )
        assert done.returncode == 0, done.stderr
    assert {p.name for p in ca.iterdir()} == {"ca.key", "ca.crt", "crl.pem"}
    wait = next(
        c
        for o in base_objects()
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["initContainers"]
    )
    assert f"{command[3]}/crl.pem" in " ".join(wait["command"])


# --- Settings the files set -------------------------------------------------------------------


def compose_services() -> dict[str, Any]:
    """compose.yaml's services."""
    (document,) = load_documents(COMPOSE)
    services: dict[str, Any] = document["services"]
    return services


def compose_environment(service: str) -> dict[str, str]:
    """A service's environment with `${VAR...}` interpolations replaced by a sample value."""
    environment = compose_services()[service]["environment"]
    return {k: re.sub(r"\$\{[^}]*\}", "sample", str(v)) for k, v in environment.items()}


def dockerfile_environment(name: str) -> dict[str, str]:
    """The ENV of a Dockerfile's final stage."""
    pairs = [
        word.split("=", 1)
        for instruction in final_stage(dockerfile_instructions(DEPLOY / "container" / name))
        if instruction.keyword == "ENV"
        for word in instruction.arguments.split()
    ]
    return {key: value for key, value in pairs}


def config_map(objects: list[dict[str, Any]], name: str) -> dict[str, str]:
    """The data of one ConfigMap."""
    (found,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name]
    data: dict[str, str] = found["data"]
    return data


def test_control_plane_accepts_every_setting_the_files_set() -> None:
    image = dockerfile_environment("control-plane.Dockerfile")
    sources = [config_map(base_objects(), "edgefleet-cp-config")]
    sources.append(compose_environment("control-plane"))
    for overlay in OVERLAYS:
        if (objects := kustomize_build(K8S / "overlays" / overlay)) is not None:
            sources.append(config_map(objects, "edgefleet-cp-config"))
    for source in sources:
        settings = ControlPlaneSettings.build({**image, **source})  # on top of the image's ENV
        assert settings.host == "0.0.0.0"
        assert str(settings.data_dir) == "/var/lib/edgefleet-cp"
        # Every interface, so TLS: served here, or terminated by the proxy in front.
        assert settings.tls_cert_file is not None or settings.behind_tls_proxy
    # The image alone listens on every interface without TLS: refused, naming both ways out.
    with pytest.raises(InvalidSettings, match=r"--tls-cert FILE .* --behind-tls-proxy"):
        ControlPlaneSettings.build(image)
    # Compose has no proxy in front: the control plane serves HTTPS itself.
    compose = ControlPlaneSettings.build({**image, **compose_environment("control-plane")})
    assert compose.tls_cert_file is not None
    assert not compose.behind_tls_proxy


def test_agent_accepts_every_setting_the_files_set() -> None:
    daemonset = next(o for o in base_objects() if o["kind"] == "DaemonSet")
    pod_env = {e["name"]: e.get("value", "node-1") for e in daemonset_env(daemonset)}
    overlays = {
        overlay: config_map(objects, "edgefleet-agent-config")
        for overlay in OVERLAYS
        if (objects := kustomize_build(K8S / "overlays" / overlay)) is not None
    }
    for dockerfile in ("agent.Dockerfile", "agent-gpu.Dockerfile"):
        image = dockerfile_environment(dockerfile)
        sources = [
            {**config_map(base_objects(), "edgefleet-agent-config"), **pod_env},
            compose_environment("agent"),
            *({**config, **pod_env} for config in overlays.values()),
        ]
        for source in [image, *sources]:
            settings = load_settings(None, {**image, **source})
            assert settings.server.host == "0.0.0.0"
            assert settings.server.port == 8000
            assert str(settings.state_dir) == "/var/lib/edgefleet"
    # Where agents enroll over a plain in-cluster URL, they are told the network is trusted;
    # production enrolls over https:// and allows nothing.
    for overlay, config in overlays.items():
        plain = config["EDGEFLEET_ENROLL_URL"].startswith("http://")
        allowed = load_settings(None, {**config, **pod_env}).allow_plain_transport
        assert allowed == plain, overlay
    assert compose_environment("agent")["EDGEFLEET_ENROLL_URL"].startswith("https://")


def daemonset_env(daemonset: dict[str, Any]) -> list[dict[str, Any]]:
    """The agent container's `env` entries."""
    env: list[dict[str, Any]] = daemonset["spec"]["template"]["spec"]["containers"][0]["env"]
    return env


# --- Compose ----------------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_schema() -> None:
    checker = find_tool("check-jsonschema")
    if checker is None:
        pytest.skip("check-jsonschema is not installed (pip install -e '.[dev]')")
    done = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_runs_four_services_with_health_checks() -> None:
    services = compose_services()
    assert set(services) == {"postgres", "mosquitto", "control-plane", "agent"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    for name in ("control-plane", "agent"):
        for dependency in services[name]["depends_on"].values():
            assert dependency["condition"] == "service_healthy", name
    assert "cp migrate" in " ".join(services["control-plane"]["entrypoint"])
    assert services["agent"]["entrypoint"] == ["edgefleet-agent-start"]


def test_compose_mounts_and_builds_files_that_exist() -> None:
    services = compose_services()
    for name, service in services.items():
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./secrets/"):
                continue  # the operator's, described in secrets/README.md
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
    assert (DEPLOY / "secrets" / "README.md").is_file()


def test_compose_mosquitto_adapts_lines_the_production_config_has() -> None:
    """The container's sed edits must find their lines, or they silently change nothing."""
    config = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    assert "log_dest syslog" in config
    assert any(line.startswith("persistence_location ") for line in config)
    command = " ".join(compose_services()["mosquitto"]["command"])
    assert "s|^log_dest syslog|" in command
    assert "s|^persistence_location .*|" in command
