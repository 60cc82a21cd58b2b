"""The one choice rule: fluent, not behind the reference's front, nearest both bars."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emovec.evaluation import Tolerance
from emovec.evaluation.choice import attainment, choose, front_success

PLAIN = {
    "success": 0.1,
    "retention": 1.0,
    "sim_query": 0.5,
    "degenerate": 0.0,
    "median_perplexity": 10.0,
    "offensive": 0.0,
}


def _row(success: float, retention: float, **changes: Any) -> dict[str, Any]:
    return {
        **PLAIN,
        "success": success,
        "retention": retention,
        "sim_query": 0.5 * retention,
        **changes,
    }


def test_attainment_caps_each_bar_at_one() -> None:
    assert attainment(0.4, 0.35) == pytest.approx(1.0)  # half of each bar
    assert attainment(1.0, 1.0) == attainment(0.8, 0.7) == pytest.approx(2.0)
    assert attainment(0.8, 0.35, target_success=1.0, min_retention=0.35) == pytest.approx(1.8)


@pytest.mark.parametrize(("target", "retention"), [(0.0, 0.7), (0.8, 0.0), (-1.0, 0.7)])
def test_attainment_refuses_bars_that_are_not_positive(target: float, retention: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        attainment(0.5, 0.5, target_success=target, min_retention=retention)


def test_front_success_interpolates_between_pareto_points_and_is_level_beyond() -> None:
    front = [(1.0, 0.1), (0.7, 0.5), (0.4, 0.9)]
    assert front_success(front, 0.55) == pytest.approx(0.7)
    assert front_success(front, 0.85) == pytest.approx(0.3)
    assert front_success(front, 0.3) == pytest.approx(0.9)  # below: the loudest point's
    assert front_success(front, 1.2) == pytest.approx(0.1)  # above: the quietest point's
    dominated = [*front, (0.5, 0.3), (0.2, 0.6)]  # less topic and less emotion than (0.7, .5)
    for retention in (0.2, 0.45, 0.55, 0.9):
        assert front_success(dominated, retention) == front_success(front, retention)


def test_front_success_needs_points() -> None:
    with pytest.raises(ValueError, match="at least one point"):
        front_success([], 0.5)
    with pytest.raises(ValueError, match="finite"):
        front_success([(math.nan, 0.5)], 0.5)


def test_front_success_takes_repeated_and_unmeasured_points_in_its_stride() -> None:
    """Equal points (two strengths scoring alike) and a nan retention change nothing."""
    front = [(1.0, 0.1), (0.7, 0.5), (0.4, 0.9)]
    noisy = [*front, (0.7, 0.5), (math.nan, 1.0)]
    for retention in (0.3, 0.55, 0.7, 0.85, 1.1):
        assert front_success(noisy, retention) == pytest.approx(front_success(front, retention))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(st.tuples(st.floats(0.0, 1.2), st.floats(0.0, 1.0)), min_size=1, max_size=8),
    st.floats(0.0, 1.3),
    st.floats(0.0, 1.3),
)
def test_front_success_is_a_monotone_upper_envelope(
    points: list[tuple[float, float]], a: float, b: float
) -> None:
    """Keeping more topic never buys more success on the front, every point lies on or under
    it, and it stays within the points' successes."""
    low, high = sorted((a, b))
    assert front_success(points, high) <= front_success(points, low) + 1e-9
    for retention, success in points:
        assert front_success(points, retention) >= success - 1e-9
    successes = [s for _, s in points]
    assert min(successes) - 1e-9 <= front_success(points, a) <= max(successes) + 1e-9


def test_choose_takes_the_fluent_candidate_nearest_both_bars() -> None:
    on_bar = _row(0.8, 0.7)
    loud = _row(1.0, 0.5)
    looping = _row(1.0, 0.9, degenerate=0.5)  # more than plain + 0.05
    rude = _row(1.0, 0.9, offensive=0.1)
    assert choose([loud, looping, rude, on_bar], PLAIN) is on_bar
    assert choose([looping, rude], PLAIN) is None
    assert choose([looping, loud], PLAIN, assume_fluent=True) is looping
    assert choose([loud, on_bar], PLAIN, tolerance=Tolerance(min_topic_ratio=0.5)) is loud


def test_choose_keeps_only_candidates_on_or_above_the_reference_front() -> None:
    """The reference front (with plain at retention 1) joins (1, 0.1), (0.7, 0.5), (0.4, 0.9):
    a candidate under it loses even where its attainment is higher, unless within slack."""
    reference = [_row(0.5, 0.7), _row(0.9, 0.4)]
    under = _row(0.6, 0.55)  # front there: 0.7
    ahead = _row(0.75, 0.55)
    quiet = _row(0.3, 0.85)  # front there: 0.3
    assert choose([under, quiet], PLAIN) is under  # attainment 1.54 against 1.375
    assert choose([under, quiet], PLAIN, reference=reference) is quiet
    assert choose([under, quiet, ahead], PLAIN, reference=reference) is ahead
    assert choose([under], PLAIN, reference=reference) is None
    assert choose([under], PLAIN, reference=reference, slack=0.1) is under
    assert choose([*reference, under], PLAIN, reference=reference) is reference[0]


def test_choose_ties_go_to_the_widest_margin_then_success_then_retention_then_the_first() -> None:
    capped = _row(1.0, 0.8)
    exact = _row(0.8, 0.7)
    assert choose([exact, capped], PLAIN) is capped
    edge = _row(1.0, 0.72)  # meets both bars, 0.02 above the retention bar
    centred = _row(0.9, 0.8)  # 0.1 above each
    assert choose([edge, centred], PLAIN) is centred
    assert choose([_row(0.9, 0.75), _row(0.85, 0.75)], PLAIN)["success"] == 0.9  # equal margins
    more_topic = _row(1.0, 0.9)
    assert choose([capped, more_topic], PLAIN) is more_topic
    twin = _row(1.0, 0.9)
    assert choose([more_topic, twin], PLAIN) is more_topic
    assert choose([twin, more_topic], PLAIN) is twin


def test_an_unmeasured_offensive_rate_does_not_rule_a_candidate_out() -> None:
    assert choose([_row(0.8, 0.7, offensive=math.nan)], PLAIN) is not None
