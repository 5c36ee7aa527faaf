"""The agent's durable state: what survives a restart, and what a damaged file turns into."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from agent.bundles.state import (
    STATE_FILE,
    Activation,
    AgentState,
    InstalledVersion,
    ModelRecord,
    StateFile,
)

D1, D2, D3, D4, D5 = (f"{n:x}" * 64 for n in range(1, 6))


def v(version: int, digest: str) -> InstalledVersion:
    """Shorthand for an installed version."""
    return InstalledVersion(version, digest)


def a_state() -> AgentState:
    """Two models, one with history, an activation under way and a bundle given up on."""
    mlp = ModelRecord(
        active=v(3, D3),
        history=(v(2, D2), v(1, D1)),
        activation=Activation(4, D4, "warming", attempts=2),
        failed=(D5,),
    )
    return AgentState(
        assignment_serial=7,
        assignment_document='{"signed": {"serial": 7}}',
        models={"mlp": mlp, "cnn": ModelRecord(active=v(1, D5))},
    )


def test_a_first_start_has_an_empty_state(tmp_path: Path) -> None:
    assert StateFile(tmp_path).load() == AgentState()
    assert not (tmp_path / STATE_FILE).exists()


def test_a_saved_state_loads_back_equal(tmp_path: Path) -> None:
    state = a_state()
    StateFile(tmp_path / "new").save(state)  # creates the directory
    assert StateFile(tmp_path / "new").load() == state


def test_saving_replaces_the_whole_file_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    file = StateFile(tmp_path)
    file.save(a_state())
    file.save(AgentState(assignment_serial=8))
    assert file.load() == AgentState(assignment_serial=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]
    # It holds the assignment document, so only the agent's user may read it.
    assert (tmp_path / STATE_FILE).stat().st_mode & 0o777 == 0o600


def test_records_round_trip_through_json() -> None:
    record = a_state().models["mlp"]
    assert ModelRecord.from_json(json.loads(json.dumps(record.as_json()))) == record
    assert ModelRecord.from_json({}) == ModelRecord()
    # A state written before attempts were counted reads as a first attempt.
    old = {"version": 4, "digest": D4, "phase": "staged"}
    assert Activation.from_json(old) == Activation(4, D4, "staged", 1)


def test_committing_makes_the_old_active_the_newest_history() -> None:
    record = ModelRecord(active=v(1, D1), activation=Activation(2, D2, "probation"))
    committed = record.committed(v(2, D2), keep=3)
    assert committed.active == v(2, D2)
    assert committed.history == (v(1, D1),)
    assert committed.activation is None


def test_committing_keeps_only_the_configured_number_of_versions() -> None:
    record = ModelRecord()
    for version, digest in enumerate((D1, D2, D3, D4), start=1):
        record = record.committed(v(version, digest), keep=3)
    assert record.active == v(4, D4)
    assert record.history == (v(3, D3), v(2, D2))  # three in all, newest first
    assert record.committed(v(5, D5), keep=1).history == ()


def test_committing_a_version_from_the_history_moves_it_out_of_it() -> None:
    record = ModelRecord(active=v(3, D3), history=(v(2, D2), v(1, D1)))
    rolled_back = record.committed(v(2, D2), keep=3)  # an operator's rollback
    assert rolled_back.active == v(2, D2)
    assert rolled_back.history == (v(3, D3), v(1, D1))


def test_committing_keeps_the_bundles_given_up_on() -> None:
    record = ModelRecord(active=v(1, D1), failed=(D5,))
    assert record.committed(v(2, D2), keep=3).failed == (D5,)


def test_referenced_digests_are_active_history_and_activation() -> None:
    state = a_state()
    # The given-up D5 is referenced only because cnn serves it; mlp's failed list is not.
    assert state.referenced_digests() == {D1, D2, D3, D4, D5}
    assert AgentState(models={"mlp": ModelRecord(failed=(D5,))}).referenced_digests() == set()


def test_with_model_replaces_one_record_only() -> None:
    state = a_state()
    changed = state.with_model("cnn", ModelRecord())
    assert changed.models["cnn"] == ModelRecord()
    assert changed.models["mlp"] == state.models["mlp"]
    assert state.models["cnn"].active == v(1, D5)  # the original is untouched
    assert state.model("unknown") == ModelRecord()


@pytest.mark.parametrize(
    "content",
    [
        b'{"format": 1, "models": {"mlp": {"active": {"ver',  # torn (not by write_atomic)
        b"\x00\x00\x00\x00",  # a zeroed block after a disk fault
        b'{"format": 99, "models": {}}',  # written by a future agent
        b'{"format": 1, "models": {"mlp": {"active": {"version": 1}}}}',  # no digest
        b"[1, 2, 3]",  # valid JSON, not an object
        b'{"format": 1, "models": {"mlp": "v1"}}',  # a record that is not an object
    ],
)
def test_an_unreadable_state_file_is_moved_aside_and_the_agent_starts_empty(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="agent.bundles.state"):
        assert StateFile(tmp_path).load() == AgentState()
    assert (tmp_path / "state.corrupt").read_bytes() == content  # the evidence is kept
    assert not (tmp_path / STATE_FILE).exists()
    assert "starting empty" in caplog.text
    # The next save starts a fresh file and the one after loads normally.
    StateFile(tmp_path).save(a_state())
    assert StateFile(tmp_path).load() == a_state()


def test_a_state_file_from_a_killed_save_is_never_half_written(tmp_path: Path) -> None:
    # write_atomic's temporary file, left by a process killed before the rename, is ignored.
    file = StateFile(tmp_path)
    file.save(a_state())
    (tmp_path / f".{STATE_FILE}.0123456789ab.tmp").write_bytes(b'{"format": 1, "mo')
    assert file.load() == a_state()
    assert os.listdir(tmp_path).count(STATE_FILE) == 1


def test_the_temporary_files_of_killed_saves_are_discarded_at_start(tmp_path: Path) -> None:
    file = StateFile(tmp_path)
    file.save(a_state())
    for token in ("0123456789ab", "ba9876543210"):  # two saves killed before their rename
        (tmp_path / f".{STATE_FILE}.{token}.tmp").write_bytes(b'{"format": 1, "mo')
    (tmp_path / ".other.json.0123456789ab.tmp").write_bytes(b"{}")  # not the state's
    assert file.discard_interrupted_writes() == 2
    assert sorted(os.listdir(tmp_path)) == [".other.json.0123456789ab.tmp", STATE_FILE]
    assert file.load() == a_state()
