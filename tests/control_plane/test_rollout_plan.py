"""Rollout planning: targets, strategies and stratified canary waves."""

from __future__ import annotations

import pytest

from control_plane.rollout_plan import (
    InvalidRollout,
    Step,
    Strategy,
    Target,
    parse_target,
    plan_waves,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", Target("all")),
        ("group:edge-eu", Target("group", group="edge-eu")),
        ("label:site=berlin,tier=2", Target("label", labels=(("site", "berlin"), ("tier", "2")))),
        ("device:a,b,a", Target("device", devices=("a", "b"))),
    ],
)
def test_targets_parse_and_print_back(text: str, expected: Target) -> None:
    target = parse_target(text)
    assert target == expected
    assert parse_target(str(target)) == target


@pytest.mark.parametrize("text", ["", "group:", "label:site", "region:eu", "group:a b", "cluster"])
def test_bad_targets_are_refused_with_the_grammar(text: str) -> None:
    with pytest.raises(InvalidRollout):
        parse_target(text)


def test_steps_take_percentages_and_counts() -> None:
    assert Step.parse("25%", "wave") == Step(percent=25.0)
    assert Step.parse({"count": 3}, "wave") == Step(count=3)
    assert Step.parse(4, "wave") == Step(count=4)
    for bad in ("0%", "101%", 0, "many", True, None):
        with pytest.raises(InvalidRollout):
            Step.parse(bad, "wave")


def test_strategy_defaults_and_refusals() -> None:
    assert Strategy.parse(None).kind == "all"
    canary = Strategy.parse({"kind": "canary"})
    assert canary.canary == Step(percent=10.0)
    assert Strategy.parse(canary.as_json()) == canary  # what is stored parses back the same
    with pytest.raises(InvalidRollout, match="unknown strategy fields"):
        Strategy.parse({"kind": "canary", "speed": "fast"})
    with pytest.raises(InvalidRollout, match="use 'canary'"):
        Strategy.parse({"kind": "all", "waves": ["50%"]})
    with pytest.raises(InvalidRollout, match="rate_per_minute"):
        Strategy.parse({"kind": "canary", "rate_per_minute": 0})


def _fleet(counts: dict[str, int]) -> list[tuple[str, str]]:
    return [(f"{cls}-{i:03d}", cls) for cls, n in counts.items() for i in range(n)]


def test_all_at_once_is_one_wave_of_every_device() -> None:
    devices = _fleet({"x86-cpu": 5})
    assert plan_waves(devices, Strategy.parse(None), seed=1) == [sorted(d for d, _ in devices)]


def test_the_canary_holds_every_backend_class_even_when_small() -> None:
    devices = _fleet({"x86-cpu": 90, "gpu": 3, "arm-cpu": 6, "openvino": 1})
    strategy = Strategy.parse({"kind": "canary", "canary": "2%", "waves": ["50%"]})
    waves = plan_waves(devices, strategy, seed=7)
    classes = {device: cls for device, cls in devices}
    assert {classes[d] for d in waves[0]} == {"x86-cpu", "gpu", "arm-cpu", "openvino"}
    assert len(waves[0]) == 4  # 2% of 100 is 2, raised to one per class
    assert len(waves[0]) + len(waves[1]) == 50  # cumulative percentage
    flat = [d for wave in waves for d in wave]
    assert sorted(flat) == sorted(classes)
    assert len(flat) == len(set(flat))  # each device once


def test_waves_that_stop_short_get_a_final_wave_with_the_rest() -> None:
    devices = _fleet({"x86-cpu": 10})
    strategy = Strategy.parse({"kind": "canary", "canary": {"count": 1}, "waves": [2, "50%"]})
    sizes = [len(w) for w in plan_waves(devices, strategy, seed=3)]
    assert sizes == [1, 2, 2, 5]


def test_the_plan_is_reproducible_per_seed_and_varies_between_seeds() -> None:
    devices = _fleet({"x86-cpu": 40})
    strategy = Strategy.parse({"kind": "canary", "canary": "10%"})
    first = plan_waves(devices, strategy, seed=11)
    assert plan_waves(devices, strategy, seed=11) == first
    canaries = {tuple(plan_waves(devices, strategy, seed=s)[0]) for s in range(10)}
    assert len(canaries) > 1
