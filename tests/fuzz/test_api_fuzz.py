"""Fuzz the control-plane API against its own OpenAPI document (schemathesis), per credential.

One real control plane (SQLite file, migrated, keys, a stored model and an enrolled device)
serves the whole module; each test sends every operation of the document as one kind of caller
and checks no 5xx, the route table's authorization and the error shape (`tests.fuzz.api_fuzzer`).
`EDGEFLEET_FUZZ_EXAMPLES` scales the examples per operation (`make chaos` raises it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from control_plane.api.openapi import ALL_ENDPOINTS
from control_plane.api.routes import Endpoint, health
from control_plane.roles import Role
from tests.fuzz.api_fuzzer import (
    ApiFuzzer,
    Credential,
    FuzzReport,
    examples_per_operation,
    refusal,
)
from tests.fuzz.control_plane_server import ControlPlaneThread, control_plane_settings, seed
from tests.fuzz.recorder import recording

TARGETS = {
    None: "control-plane API, no token",
    Role.VIEWER: "control-plane API, viewer token",
    Role.OPERATOR: "control-plane API, operator token",
    Role.ADMIN: "control-plane API, admin token",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneThread]:
    """The control plane the module fuzzes."""
    directory = tmp_path_factory.mktemp("fuzz-cp")
    with ControlPlaneThread(control_plane_settings(directory)) as running:
        yield running


@pytest.fixture(scope="module")
def fuzzer(server: ControlPlaneThread, tmp_path_factory: pytest.TempPathFactory) -> ApiFuzzer:
    """A fuzzer of that server, with a model version and a device its paths can name."""
    fleet = seed(server, tmp_path_factory.mktemp("fuzz-seed"))
    protected = set(server.credentials.ids.values())
    return ApiFuzzer(server.url, fleet, protected, examples_per_operation())


def credential(server: ControlPlaneThread, role: Role | None) -> Credential:
    """Nobody, or the server's token for `role`."""
    return Credential(role, "" if role is None else server.credentials.secrets[role])


def check_coverage(report: FuzzReport) -> None:
    """Every route of the table answered (a run cannot pass having sent nothing), none with 5xx."""
    assert report.operations == {f"{e.method} {e.path}" for e in ALL_ENDPOINTS}
    assert not report.count("5"), report.answers


# Parametrized in this order on purpose: the admin runs last, since it may revoke the seeded
# device and create tokens, enrollment tokens and rollouts.
@pytest.mark.parametrize("role", list(TARGETS), ids=["no-token", "viewer", "operator", "admin"])
def test_every_operation_answers_as_its_route_promises(
    server: ControlPlaneThread, fuzzer: ApiFuzzer, role: Role | None
) -> None:
    with recording(TARGETS[role]) as tally:
        report = fuzzer.run(credential(server, role), tally)
    check_coverage(report)
    if role is Role.VIEWER:
        # The seed made paths resolve: some operation with an id in its path answered 2xx.
        assert any("{" in operation for operation in report.count("2")), report.answers


def test_the_authorization_check_reads_the_route_table_as_the_middleware_does() -> None:
    def route(role: Role | None, device: bool = False) -> Endpoint:
        return Endpoint("GET", "/x", health, role, "x", device=device)

    callers = [None, Role.VIEWER, Role.OPERATOR, Role.ADMIN]
    assert [refusal(route(None), c) for c in callers] == [None] * 4
    # No such route today: only a device's signature would open it, never a bearer token.
    assert [refusal(route(None, device=True), c) for c in callers] == [401] * 4
    assert [refusal(route(Role.VIEWER, device=True), c) for c in callers] == [401, None, None, None]
    assert [refusal(route(Role.OPERATOR), c) for c in callers] == [401, 403, None, None]
    assert [refusal(route(Role.ADMIN), c) for c in callers] == [401, 403, 403, None]
