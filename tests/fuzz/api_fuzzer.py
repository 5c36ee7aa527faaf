"""Schemathesis against the live control plane, one credential at a time, judged by the route table.

Each operation of the OpenAPI document gets Hypothesis examples in positive and negative mode
(and, where the seed stored something its path can name, with those path values). Every response
is checked by `not_a_server_error`, by schemathesis's conformance checks (a documented status,
content type and response schema), and by two checks of this module:

- `authorization`: what `control_plane.api.routes.Endpoint.role`/`device` promise. Without a
  valid token every protected route answers 401; a token below the route's role gets 403; a
  bearer token never opens a route that only devices may call; a token that is enough is never
  refused with 401 or 403 by a route that needs one.
- `error_shape`: every 4xx and 5xx answer is the API's one error shape, `{"error": "..."}`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import CheckContext, GenerationMode, Response
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from control_plane.api.openapi import ALL_ENDPOINTS
from control_plane.api.routes import PREFIX, Endpoint, revoke_token
from control_plane.roles import Role
from tests.fuzz.budget import FUZZ_EXAMPLES, fuzz_settings
from tests.fuzz.control_plane_server import SeededFleet, SeedValue
from tests.fuzz.recorder import Tally

REQUEST_TIMEOUT_S = 30.0
OPENAPI_PATH = f"{PREFIX}/openapi.json"
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)

# A schemathesis case and the operation it belongs to (the library's generics add nothing here).
Case = schemathesis.Case[Any]
Operation = schemathesis.APIOperation[Any, Any, Any, Any]


def examples_per_operation(budget: int = FUZZ_EXAMPLES) -> int:
    """A tenth of the fuzz budget for each operation (at least 3): ~30 operations per credential."""
    return max(3, budget // 10)


def refusal(endpoint: Endpoint, role: Role | None) -> int | None:
    """The status the route must refuse a caller holding `role` (None: no token) with, or None."""
    if role is None:
        return 401 if endpoint.role is not None or endpoint.device else None
    if endpoint.role is None:
        return 401 if endpoint.device else None  # only a device's signature opens it
    return 403 if role < endpoint.role else None


@dataclass
class FuzzReport:
    """What one credential's run got back: answers per operation and status."""

    answers: Counter[tuple[str, int]] = field(default_factory=Counter)

    @property
    def operations(self) -> set[str]:
        """The operations (`METHOD /path`) that answered at least once."""
        return {operation for operation, _ in self.answers}

    def count(self, status_class: str) -> dict[str, int]:
        """Answers whose status starts with `status_class` ("2", "40"...), per operation."""
        counts: Counter[str] = Counter()
        for (operation, status), n in self.answers.items():
            if str(status).startswith(status_class):
                counts[operation] += n
        return dict(counts)


@dataclass(frozen=True)
class Credential:
    """Who the fuzzer is: a role and its token's secret, or nobody (None, "")."""

    role: Role | None
    secret: str = ""

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header of the token (none without one)."""
        return {"Authorization": f"Bearer {self.secret}"} if self.secret else {}


def load_schema(base_url: str, credential: Credential) -> OpenApiSchema:
    """The live server's OpenAPI document as schemathesis sees it.

    It is fetched here and handed over as a dict: loaded from its URL, schemathesis would leave
    out the operation that serves the document, and this fuzzer covers every route.
    Without a token, schemathesis generates the security headers itself (junk bearer tokens and
    device signatures, or none at all), which are as good as no credentials. With one, it does
    not: a generated (or deliberately omitted) Authorization header would replace the token.
    """
    answer = requests.get(f"{base_url}{OPENAPI_PATH}", timeout=REQUEST_TIMEOUT_S)
    answer.raise_for_status()
    config = schemathesis.Config.from_dict(
        {"generation": {"with-security-parameters": credential.role is None}}
    )
    return schemathesis.openapi.from_dict(answer.json(), config=config)


def endpoint_of(operation: Operation) -> Endpoint:
    """The route table's entry for a schemathesis operation."""
    for endpoint in ALL_ENDPOINTS:
        if (endpoint.method, endpoint.path) == (operation.method.upper(), operation.path):
            return endpoint
    raise AssertionError(f"{operation.label} is in the OpenAPI document but not the route table")


def authorization_check(endpoint: Endpoint, role: Role | None) -> CheckFunction:
    """A check that the response is what the route's role and device flag promise."""
    expected = refusal(endpoint, role)
    who = "no token" if role is None else f"a {role.value} token"

    def authorization(ctx: CheckContext, response: Response, case: Case) -> bool | None:
        status = response.status_code
        if expected is not None:
            assert status == expected, f"{who} must get {expected}, got {status}"
        elif role is not None and endpoint.role is not None:
            assert status not in (401, 403), f"{who} is enough here, yet got {status}"
        return None

    return authorization


def error_shape(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every error answer is a JSON object with a non-empty `error` message."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} without a JSON body") from None
    message = body.get("error") if isinstance(body, dict) else None
    assert isinstance(message, str), f"{response.status_code} without an error: {body}"
    assert message, f"{response.status_code} with an empty error message"
    return None


def case_strategy(
    operation: Operation, fleet: SeededFleet, keep: Callable[[Case], bool]
) -> st.SearchStrategy[Case]:
    """Positive and negative cases, some naming the seeded objects; only those `keep` accepts.

    A negative case needs something to break; where an operation has nothing (no parameters,
    only string path segments) schemathesis rejects the draw and the positive ones remain.
    """
    strategies = [operation.as_strategy(mode) for mode in MODES]
    names = [parameter.name for parameter in operation.path_parameters]
    fixed = {name: fleet.path_values[name] for name in names if name in fleet.path_values}
    if fixed:
        strategies += [operation.as_strategy(mode, path_parameters=fixed) for mode in MODES]
    if operation.body:
        seeded = operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed or None)
        strategies.append(seeded.map(lambda case: with_body_values(case, fleet.body_values)))
    return st.one_of(strategies).filter(keep)


def with_body_values(case: Case, values: Mapping[str, SeedValue]) -> Case:
    """`case` with the seeded values in the JSON body fields it generated under their names."""
    if isinstance(case.body, dict):
        for name in case.body.keys() & values.keys():
            case.body[name] = values[name]
    return case


def sparing_tokens(operation: Operation, protected: set[int]) -> Callable[[Case], bool]:
    """A filter that drops the operation's cases that would revoke one of `protected`."""
    if endpoint_of(operation).handler is not revoke_token:
        return lambda case: True

    def spares(case: Case) -> bool:
        try:  # read the way the API reads it: int() also takes " 1", "+1" and "0_1"
            return int(str(case.path_parameters["id"])) not in protected
        except (KeyError, TypeError, ValueError):
            return True

    return spares


class ApiFuzzer:
    """Runs every operation of the live API as one credential and checks each answer."""

    def __init__(
        self,
        base_url: str,
        fleet: SeededFleet,
        protected_tokens: set[int],
        examples: int,
    ) -> None:
        self.base_url = base_url
        self.fleet = fleet
        self.protected_tokens = protected_tokens  # the fuzzer's own: revoking them ends the run
        self.settings = settings(
            fuzz_settings,
            max_examples=examples,
            suppress_health_check=[
                *fuzz_settings.suppress_health_check,
                HealthCheck.filter_too_much,  # negative draws with nothing to break are rejected
            ],
        )

    def run(self, credential: Credential, tally: Tally) -> FuzzReport:
        """Fuzz every operation as `credential`; a failed check raises with a curl to repeat it.

        `tally` counts examples and statuses for the chaos suite's figures.
        """
        schema = load_schema(self.base_url, credential)
        report = FuzzReport()
        with requests.Session() as session:
            for result in schema.get_all_operations():
                if isinstance(result, Err):
                    raise result.err()  # the document itself is broken: that fails the test
                self._fuzz(result.ok(), credential, session, tally, report)
        return report

    def _fuzz(
        self,
        operation: Operation,
        credential: Credential,
        session: requests.Session,
        tally: Tally,
        report: FuzzReport,
    ) -> None:
        endpoint = endpoint_of(operation)
        checks = [
            not_a_server_error,
            authorization_check(endpoint, credential.role),
            error_shape,
            # The answer is what the OpenAPI document promises: a documented status, its
            # content type and its schema.
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ]
        headers = credential.headers
        keep = sparing_tokens(operation, self.protected_tokens)
        strategy = case_strategy(operation, self.fleet, keep)

        @self.settings
        @given(case=strategy)
        def send(case: Case) -> None:
            tally.example()
            response = case.call(
                base_url=self.base_url, session=session, headers=headers, timeout=REQUEST_TIMEOUT_S
            )
            tally.saw(response.status_code)
            report.answers[operation.label, response.status_code] += 1
            case.validate_response(response, checks=checks, headers=headers)

        send()
