"""Pareto ranking: constrained non-dominated sorting, crowding distance, the total order, the
front, and 2-D hypervolume, on hand-made tables and against brute force."""

import itertools
import math

import numpy as np
import pytest

from sweeps.pareto import (
    Constraint,
    Criteria,
    Objective,
    crowding_distance,
    dominance_matrix,
    hypervolume_2d,
    hypervolume_box,
    non_dominated_fronts,
    pareto_front,
    rank,
)

MIN2 = (Objective("loss"), Objective("params"))


def keys_of(ranking):
    return [r.key for r in ranking]


def test_fronts_of_a_hand_made_table():
    #        A       B       C       D (B<D)  E (D<E)  F (E<F)  G = B (tie)
    pts = [(1, 5), (2, 2), (5, 1), (3, 3), (4, 4), (6, 6), (2, 2)]
    fronts = non_dominated_fronts(np.array(pts, float), np.zeros(len(pts)))
    assert fronts.tolist() == [0, 0, 0, 1, 2, 3, 0]


def test_equal_in_one_objective_and_better_in_the_other_dominates():
    fronts = non_dominated_fronts(np.array([(1, 3), (1, 2), (0, 3)], float), np.zeros(3))
    assert fronts.tolist() == [1, 0, 0]


def test_constrained_domination_feasible_first_then_smaller_violation():
    pts = np.array([(9, 9), (0, 0), (5, 5), (1, 1)], float)
    violations = np.array([0.0, 0.5, 0.1, 0.1])  # only the worst point is feasible
    fronts = non_dominated_fronts(pts, violations)
    # feasible (9,9) first, then the two with violation 0.1 (objectives ignored), then 0.5
    assert fronts.tolist() == [0, 2, 1, 1]
    ranking = rank(pts, violations, ["w", "best_but_violating", "v1", "v2"])
    assert keys_of(ranking) == ["w", "v1", "v2", "best_but_violating"]
    assert [r.crowding for r in ranking[1:]] == [0.0, 0.0, 0.0]


def test_crowding_distance_hand_computed():
    # ranges 4 and 4; P1 gets (3-0)/4 + (4-1)/4 = 1.5, P2 gets (4-1)/4 + (2-0)/4 = 1.25
    pts = np.array([(0, 4), (1, 2), (3, 1), (4, 0)], float)
    assert crowding_distance(pts, np.arange(4)).tolist() == [math.inf, 1.5, 1.25, math.inf]
    ranking = rank(pts, np.zeros(4), ["p0", "p1", "p2", "p3"])
    assert keys_of(ranking) == ["p0", "p3", "p1", "p2"]
    assert [r.front for r in ranking] == [0, 0, 0, 0]


def test_crowding_ignores_an_objective_without_spread_and_ties_go_to_the_smaller_key():
    pts = np.array([(1, 3), (1, 3), (1, 3)], float)  # identical: no spread, all crowding 0
    assert crowding_distance(pts, np.arange(3)).tolist() == [0.0, 0.0, 0.0]
    assert keys_of(rank(pts, np.zeros(3), ["t2", "t0", "t1"])) == ["t0", "t1", "t2"]


def random_table(rng, n, with_infeasible=True):
    values = rng.integers(0, 5, size=(n, 2)).astype(float)  # small integers: many ties
    violations = rng.choice([0.0, 0.0, 0.0, 0.2, 0.5], size=n) if with_infeasible else np.zeros(n)
    return values, violations, [f"t{i:02d}" for i in range(n)]


def test_ranking_does_not_depend_on_input_order():
    rng = np.random.default_rng(0)
    for _ in range(20):
        values, violations, keys = random_table(rng, 9)
        expected = rank(values, violations, keys)
        for _ in range(5):
            perm = rng.permutation(len(keys))
            assert rank(values[perm], violations[perm], [keys[i] for i in perm]) == expected


def test_a_dominated_point_never_ranks_ahead_of_a_point_dominating_it():
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(30):
        values, violations, keys = random_table(rng, 12)
        position = {r.key: r.position for r in rank(values, violations, keys)}
        dominates = dominance_matrix(values, violations)
        for i, j in zip(*np.nonzero(dominates)):
            assert position[keys[i]] < position[keys[j]]
            checked += 1
    assert checked > 100


def test_non_finite_objective_counts_as_infeasible_with_infinite_violation():
    ranking = rank([(float("nan"), 0.0), (5.0, 5.0), (1.0, 1.0)], [0.0, 0.3, 0.0], ["nan", "viol", "ok"])
    assert keys_of(ranking) == ["ok", "viol", "nan"]
    assert ranking[-1].violation == math.inf


def test_rank_rejects_duplicate_keys_and_negative_violations():
    with pytest.raises(ValueError, match="unique"):
        rank([(1, 1), (2, 2)], [0, 0], ["a", "a"])
    with pytest.raises(ValueError, match=">= 0"):
        rank([(1, 1)], [-0.1], ["a"])


def test_criteria_signs_maximised_objectives_and_sums_relative_violations():
    criteria = Criteria(
        (Objective("val/abs_rel"), Objective("val/delta1", "max")),
        (Constraint("cost/peak_gpu_gib", "<=", 24), Constraint("retention/ok", ">=", 0),
         Constraint("retention/abs_rel_delta", "<=", 0.02)),
    )
    row = {"val/abs_rel": 0.2, "val/delta1": 0.9, "cost/peak_gpu_gib": 30.0, "retention/ok": -1.0,
           "retention/abs_rel_delta": 0.03}
    assert criteria.signed(row) == (0.2, -0.9)
    # (30-24)/24 + (0-(-1)) raw for a zero bound + (0.03-0.02)/0.02
    assert criteria.violation(row) == pytest.approx(0.25 + 1.0 + 0.5)
    assert criteria.metrics == ("val/abs_rel", "val/delta1", "cost/peak_gpu_gib", "retention/ok",
                                "retention/abs_rel_delta")
    assert criteria.violation({**row, "cost/peak_gpu_gib": None}) == math.inf
    assert criteria.violation({k: v for k, v in row.items() if k != "val/delta1"}) == math.inf
    feasible = {**row, "cost/peak_gpu_gib": 24.0, "retention/ok": 0.0, "retention/abs_rel_delta": 0.0}
    assert criteria.violation(feasible) == 0.0
    assert [c.excess(row[c.metric]) for c in criteria.constraints] == pytest.approx([6.0, 1.0, 0.01])
    assert [c.excess(feasible[c.metric]) for c in criteria.constraints] == pytest.approx([0.0, 0.0, -0.02])


@pytest.mark.parametrize("text, expected", [
    ("cost/peak_gpu_gib <= 24", Constraint("cost/peak_gpu_gib", "<=", 24.0)),
    ("retention/abs_rel_delta<=0.02", Constraint("retention/abs_rel_delta", "<=", 0.02)),
    ("  val/delta1 >= 0.8 ", Constraint("val/delta1", ">=", 0.8)),
])
def test_constraint_parse(text, expected):
    assert Constraint.parse(text) == expected


@pytest.mark.parametrize("text, message", [
    ("a < 3", "operator must be <= or >=, got '<'"),
    ("a == 3", "operator must be <= or >="),
    ("a <= x", "bound 'x' is not a number"),
    ("a <= nan", "bound must be a finite number"),
    ("a 3", "expected 'METRIC <= BOUND'"),
    ("<= 3", "expected 'METRIC <= BOUND'"),
])
def test_constraint_parse_errors_are_one_line_and_name_the_culprit(text, message):
    with pytest.raises(ValueError, match=message) as info:
        Constraint.parse(text)
    assert "\n" not in str(info.value)


def test_bad_objectives_and_criteria_raise():
    with pytest.raises(ValueError, match="mode must be min or max"):
        Objective("loss", "minimise")
    with pytest.raises(ValueError, match="scale must be linear or log"):
        Objective("loss", "min", "ln")
    with pytest.raises(ValueError, match="at least one objective"):
        Criteria(())
    with pytest.raises(ValueError, match="twice"):
        Criteria((Objective("loss"), Objective("loss", "max")))


def test_pareto_front_keeps_feasible_non_dominated_trials_only():
    criteria = Criteria(MIN2, (Constraint("mem", "<=", 10),))
    rows = {
        "a": {"loss": 0.1, "params": 900, "mem": 5},
        "b": {"loss": 0.3, "params": 100, "mem": 5},
        "c": {"loss": 0.3, "params": 900, "mem": 5},  # dominated by a and b
        "d": {"loss": 0.05, "params": 50, "mem": 20},  # dominates all, infeasible
        "e": {"loss": 0.2, "params": 500, "mem": 9},
    }
    assert pareto_front(criteria, rows) == ["a", "b", "e"]  # ends (inf crowding) by key, then e
    assert pareto_front(criteria, {"d": rows["d"]}) == []


def test_hypervolume_hand_computed():
    lin = (Objective("x"), Objective("y"))
    box = dict(reference=(1, 1), ideal=(0, 0))
    assert hypervolume_2d([(0.5, 0.5)], lin, **box) == pytest.approx(0.25)
    # union of [0.2,1]x[0.6,1] (0.32) and [0.5,1]x[0.3,1] (0.35), overlap 0.2
    assert hypervolume_2d([(0.2, 0.6), (0.5, 0.3)], lin, **box) == pytest.approx(0.47)
    assert hypervolume_2d([], lin, **box) == 0.0
    assert hypervolume_2d([(1.0, 0.0), (0.0, 1.2)], lin, **box) == 0.0  # not better than the reference
    # scaled box: x in [0, 0.2] (AbsRel), y maximised from 1 (reference) to 0 (ideal)
    mixed = (Objective("val/abs_rel"), Objective("score", "max"))
    assert hypervolume_2d([(0.1, 0.5)], mixed, reference=(0.2, 0.0), ideal=(0.0, 1.0)) == pytest.approx(0.25)


def test_hypervolume_log_scale_for_parameter_counts():
    objectives = (Objective("val/abs_rel"), Objective("adapter/trainable_params", scale="log"))
    box = dict(reference=(0.2, 1e7), ideal=(0.0, 1e3))
    # params 1e5 sits half-way between 1e3 and 1e7 in log space
    assert hypervolume_2d([(0.1, 1e5)], objectives, **box) == pytest.approx(0.25)
    assert hypervolume_2d([(0.1, 1e4)], objectives, **box) == pytest.approx(0.5 * 0.75)
    with pytest.raises(ValueError, match="log scale"):
        hypervolume_2d([(0.1, 0.0)], objectives, **box)


def test_hypervolume_rejects_a_reference_not_worse_than_the_ideal():
    with pytest.raises(ValueError, match="must be worse than ideal"):
        hypervolume_2d([(0.1, 0.1)], MIN2, reference=(0.0, 1.0), ideal=(1.0, 0.0))
    with pytest.raises(ValueError, match="must be worse than ideal"):
        hypervolume_2d([(0.1, 0.1)], (Objective("a", "max"), Objective("b")), reference=(1, 1), ideal=(0, 0))


def brute_force_area(points):
    """Union area of [x, 1] x [y, 1] over points in [0, 1]^2, on the grid of their coordinates."""
    xs = sorted({0.0, 1.0, *(p[0] for p in points)})
    ys = sorted({0.0, 1.0, *(p[1] for p in points)})
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(zip(xs, xs[1:]), zip(ys, ys[1:])):
        if any(px <= x0 and py <= y0 for px, py in points):
            area += (x1 - x0) * (y1 - y0)
    return area


def test_hypervolume_matches_brute_force_and_ignores_dominated_points():
    rng = np.random.default_rng(2)
    lin = (Objective("x"), Objective("y"))
    box = dict(reference=(1, 1), ideal=(0, 0))
    for _ in range(25):
        points = rng.random((rng.integers(1, 8), 2)).round(2)
        hv = hypervolume_2d(points, lin, **box)
        assert hv == pytest.approx(brute_force_area(points.tolist()))
        dominated = points[rng.integers(0, len(points), 5)] + rng.random((5, 2)) * 0.3
        assert hypervolume_2d(np.vstack([points, dominated, points[:1]]), lin, **box) == pytest.approx(hv)


def test_criteria_hypervolume_counts_feasible_trials_only():
    criteria = Criteria((Objective("x"), Objective("y")), (Constraint("mem", "<=", 1),))
    rows = {"ok": {"x": 0.5, "y": 0.5, "mem": 1}, "over": {"x": 0.0, "y": 0.0, "mem": 2}}
    assert criteria.hypervolume(rows, reference=(1, 1), ideal=(0, 0)) == pytest.approx(0.25)


def test_hypervolume_box_spans_the_points_with_a_margin_on_each_scale():
    objectives = (Objective("loss"), Objective("params", scale="log"), Objective("score", "max"))
    points = [(0.2, 100, 0.9), (0.4, 10000, 0.5), (0.3, 1000, 0.7)]
    reference, ideal = hypervolume_box(objectives, points)
    assert ideal == pytest.approx([0.2, 100, 0.9])
    assert reference == pytest.approx([0.42, 10 ** 4.2, 0.46])  # 10 % of the span beyond the worst, in log10 for params
    two, front = objectives[:2], [(0.2, 10000), (0.3, 1000), (0.4, 100)]
    reference, ideal = hypervolume_box(two, front)
    # every point of a front adds area, the ones at the worst end of an objective too
    volumes = [hypervolume_2d(front[:k], two, reference=reference, ideal=ideal) for k in (1, 2, 3)]
    assert 0 < volumes[0] < volumes[1] < volumes[2] < 1
    assert hypervolume_box(two, [(0.5, 10)]) == (pytest.approx([0.55, 10 ** 1.1]), pytest.approx([0.5, 10]))


def test_optuna_constraint_values_by_label():
    criteria = Criteria(MIN2, (Constraint("mem", "<=", 10), Constraint("acc", ">=", 0.5)))
    assert criteria.excesses({"loss": 1, "params": 1, "mem": 12, "acc": 0.75}) == {"mem <= 10": 2.0, "acc >= 0.5": -0.25}
    assert criteria.excesses({"mem": float("nan")}) == {"mem <= 10": math.inf, "acc >= 0.5": math.inf}
