"""The activation state machine and the event log it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.bundles.lifecycle import (
    ALLOWED,
    TERMINAL,
    EventLog,
    IllegalTransition,
    LifecycleEvent,
    VersionState,
    check_transition,
    make_event,
)

S = VersionState
DIGEST = "ab" * 32

EVERY_ALLOWED = [(before, after) for before, targets in ALLOWED.items() for after in targets]


@pytest.mark.parametrize(
    ("before", "after"),
    EVERY_ALLOWED,
    ids=[f"{b.value if b else 'none'}->{a.value}" for b, a in EVERY_ALLOWED],
)
def test_every_allowed_transition_passes(before: VersionState | None, after: VersionState) -> None:
    check_transition(before, after)
    event = make_event("mlp", 2, DIGEST, before, after, "why", {"attempt": 1})
    assert (event.previous, event.state) == (before.value if before else None, after.value)


def test_the_happy_path_is_allowed_step_by_step() -> None:
    path = [S.DOWNLOADING, S.VERIFYING, S.STAGED, S.VALIDATING, S.WARMING, S.PROBATION, S.ACTIVE]
    previous: VersionState | None = None
    for state in [*path, S.RETIRED, S.DOWNLOADING]:
        check_transition(previous, state)
        previous = state


def test_every_state_is_covered_and_every_terminal_state_can_start_again() -> None:
    assert set(ALLOWED) == {None, *S}
    for state in TERMINAL:
        assert S.DOWNLOADING in ALLOWED[state]
    for state in set(S) - TERMINAL:
        assert not ALLOWED[state] & {S.DOWNLOADING, S.RETIRED}  # no restart mid-attempt


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, S.ACTIVE),  # a version is never active without being installed
        (S.DOWNLOADING, S.STAGED),  # verification cannot be skipped
        (S.VERIFYING, S.PROBATION),
        (S.WARMING, S.ACTIVE),  # nor probation
        (S.PROBATION, S.FAILED),  # a version that served is reverted, not failed
        (S.FAILED, S.ACTIVE),
        (S.REVERTED, S.PROBATION),
        (S.RETIRED, S.ACTIVE),  # a rollback goes through the whole path again
        (S.ACTIVE, S.ACTIVE),
    ],
)
def test_illegal_transitions_raise(before: VersionState | None, after: VersionState) -> None:
    with pytest.raises(IllegalTransition, match=f"-> {after.value} is not allowed"):
        check_transition(before, after)
    with pytest.raises(IllegalTransition):
        make_event("mlp", 1, DIGEST, before, after)


def test_events_round_trip_through_the_log(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    assert list(log.read()) == []  # no file yet
    events = [
        make_event("mlp", 2, DIGEST, None, S.DOWNLOADING, details={"attempt": 1}),
        make_event("mlp", 2, DIGEST, S.DOWNLOADING, S.FAILED, "HTTP 404: not found"),
        make_event("cnn", 1, DIGEST, S.WARMING, S.PROBATION, details={"previous": None}),
    ]
    for event in events:
        log.append(event)
    assert list(log.read()) == events
    assert log.path.read_bytes().count(b"\n") == len(events)


def test_a_line_torn_by_a_crash_is_skipped(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    first = make_event("mlp", 2, DIGEST, None, S.DOWNLOADING)
    log.append(first)
    with log.path.open("ab") as handle:
        handle.write(b'{"details": null, "digest": "abab", "mod')  # killed mid-write
    assert list(log.read()) == [first]
    # The restarted agent appends after the torn line; its event is not glued to it.
    second = make_event("mlp", 2, DIGEST, S.DOWNLOADING, S.FAILED, "the agent restarted")
    EventLog(log.path).append(second)
    assert list(log.read()) == [first, second]


def test_lines_that_are_not_events_are_skipped(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    event = make_event("mlp", 1, DIGEST, None, S.DOWNLOADING)
    log.path.write_bytes(b'{"unexpected": 1}\n\xff\xfe\n[]\n')
    log.append(event)
    assert list(log.read()) == [event]


def test_an_event_is_plain_json() -> None:
    event = LifecycleEvent(1.5, "mlp", 3, DIGEST, "probation", "reverted", "slow", {"p95_s": 0.2})
    assert event.as_json() == {
        "time": 1.5,
        "model": "mlp",
        "version": 3,
        "digest": DIGEST,
        "previous": "probation",
        "state": "reverted",
        "reason": "slow",
        "details": {"p95_s": 0.2},
    }
