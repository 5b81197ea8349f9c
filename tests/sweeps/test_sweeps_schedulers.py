"""Multi-objective ASHA: promotion on hand-made rung tables, equality with Ray's ASHAScheduler for
one objective on scripted result streams, and its state across pickling and Tuner.restore.

The schedulers are driven the way Tune drives them: `on_trial_add`, `on_trial_result` per result,
`on_trial_complete` with the last result when a trial stops or ends, on real (stub) Tune `Trial`s.
"""

import json
import math
import pickle

import numpy as np
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from sweeps.pareto import Constraint, Criteria, Objective, dominance_matrix
from sweeps.schedulers import FINISHED, MultiObjectiveASHA, rung_milestones

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
LOSS_PARAMS = Criteria((Objective("loss"), Objective("params")))
_trials: dict[str, Trial] = {}


def trial(trial_id: str) -> Trial:
    if trial_id not in _trials:
        _trials[trial_id] = Trial("stand_in_trainable", trial_id=trial_id, stub=True)
    return _trials[trial_id]


def report(scheduler, trial_id, t, **metrics):
    return scheduler.on_trial_result(None, trial(trial_id), {"training_iteration": t, **metrics})


def table(scheduler, milestone):
    return next(tab["rows"] for tab in scheduler.rung_tables() if tab["milestone"] == milestone)


@pytest.mark.parametrize("grace, max_t, eta, expected", [
    (1, 9, 3, [1, 3, 9]), (1, 16, 2, [1, 2, 4, 8, 16]), (2, 20, 3, [2, 6, 18]), (1, 100, 4, [1, 4, 16, 64]),
    (1, 1000, 10, [1, 10, 100, 1000]),  # Ray's float logarithm drops 1000 here
    (3, 3, 2, [3]),
])
def test_rungs(grace, max_t, eta, expected):
    assert rung_milestones(grace, max_t, eta) == expected
    assert MultiObjectiveASHA(LOSS_PARAMS, grace_period=grace, max_t=max_t, reduction_factor=eta).milestones == expected


@pytest.mark.parametrize("kwargs, message", [
    (dict(grace_period=5, max_t=4), "grace_period <= max_t"), (dict(grace_period=0), "0 < grace_period"),
    (dict(reduction_factor=1), "reduction_factor must be > 1"),
])
def test_bad_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiObjectiveASHA(LOSS_PARAMS, **kwargs)


def test_two_objectives_hand_made_rung():
    s = MultiObjectiveASHA(LOSS_PARAMS, max_t=4, grace_period=1, reduction_factor=2)
    assert report(s, "t1", 1, loss=0.5, params=100) == CONTINUE  # empty rung
    # n recorded: at most floor((n-1)/2) may rank ahead
    assert report(s, "t2", 1, loss=0.6, params=200) == STOP  # n=1; dominated by t1
    # n=1; t3 shares front 0 with t1, both ends (infinite crowding): the smaller id ranks first
    assert report(s, "t3", 1, loss=0.4, params=300) == STOP
    # n=3 (1 may lead); front 0 = t1, t3, t4; ends t1, t4 before t3: t4 has one ahead
    assert report(s, "t4", 1, loss=0.2, params=400) == CONTINUE
    # n=4 (1 may lead); t5 joins front 0 but in its middle: crowding 0.1/0.3 + 200/300 = 1.0 behind
    # t3's 0.25/0.3 + 250/300 = 1.67 and the ends t1, t4: three ahead
    assert report(s, "t5", 1, loss=0.45, params=150) == STOP
    assert report(s, "t6", 1, loss=0.1, params=50) == CONTINUE  # dominates everyone
    rows = table(s, 1)
    assert [r["trial_id"] for r in rows] == ["t6", "t1", "t4", "t3", "t5", "t2"]
    assert [r["front"] for r in rows] == [0, 1, 1, 1, 1, 2]
    assert [r["crowding"] for r in rows[1:5]] == pytest.approx([math.inf, math.inf, 5 / 3, 1.0])
    assert {r["trial_id"]: r["decision"] for r in rows} == {
        "t1": CONTINUE, "t2": STOP, "t3": STOP, "t4": CONTINUE, "t5": STOP, "t6": CONTINUE}
    assert rows[0]["loss"] == 0.1 and rows[0]["params"] == 50


@pytest.mark.parametrize("eta", [2, 2.5, 3, 4])
def test_top_one_over_eta_rule_and_rays_cutoff_where_its_percentile_is_a_recorded_value(eta):
    """Recorded trials on a dominance chain (loss = params = i) have one total order; a newcomer
    placed after `ahead` of them continues iff ahead <= floor((n - 1) / eta). Where Ray's
    percentile position (1 - 1/eta)(n - 1) is an integer, Ray decides the same on the loss alone."""
    compared = 0
    for n in range(1, 13):
        for ahead in range(n + 1):
            s = MultiObjectiveASHA(LOSS_PARAMS, max_t=9, grace_period=1, reduction_factor=eta)
            ray = ASHAScheduler(metric="loss", mode="min", max_t=9, grace_period=1, reduction_factor=eta)
            for i in range(n):
                report(s, f"k{i:02d}", 1, loss=i, params=i)
                ray.on_trial_add(None, trial(f"k{i:02d}"))
                report(ray, f"k{i:02d}", 1, loss=i)
            ray.on_trial_add(None, trial("new"))
            decision = report(s, "new", 1, loss=ahead - 0.5, params=ahead - 0.5)
            assert decision == (CONTINUE if ahead <= math.floor((n - 1) / eta) else STOP), (n, ahead)
            position = (1 - 1 / eta) * (n - 1)
            if abs(position - round(position)) < 1e-9:
                assert report(ray, "new", 1, loss=ahead - 0.5) == decision, (n, ahead)
                compared += 1
    assert compared >= 15


def test_infeasible_trials_rank_last_and_are_stopped():
    criteria = Criteria(LOSS_PARAMS.objectives, (Constraint("mem", "<=", 10),))
    s = MultiObjectiveASHA(criteria, max_t=4, grace_period=1, reduction_factor=2)
    assert report(s, "a", 1, loss=0.5, params=100, mem=5) == CONTINUE
    assert report(s, "b", 1, loss=0.1, params=10, mem=20) == STOP  # best objectives, infeasible
    assert report(s, "c", 1, loss=0.4, params=90, mem=5) == CONTINUE  # floor(1/2)=0 lead: dominates a
    assert report(s, "d", 1, loss=0.9, params=900, mem=11) == STOP
    assert report(s, "e", 1, loss=0.2, params=20, mem=1) == CONTINUE  # dominates every feasible one
    rows = table(s, 1)
    assert [r["trial_id"] for r in rows] == ["e", "c", "a", "d", "b"]  # violation 0.1 before 1.0
    assert [r["violation"] for r in rows[-2:]] == pytest.approx([0.1, 1.0])


def test_a_dominated_trial_is_never_promoted_right_after_a_dominating_one_was_stopped():
    rng = np.random.default_rng(3)
    criteria = Criteria(LOSS_PARAMS.objectives, (Constraint("mem", "<=", 1),))
    checked = 0
    for case in range(60):
        s = MultiObjectiveASHA(criteria, max_t=9, grace_period=1, reduction_factor=3)
        for i in range(rng.integers(1, 12)):
            report(s, f"c{case}r{i:02d}", 1, loss=rng.random(), params=rng.integers(1, 5), mem=rng.choice([0.5, 2]))
        y = dict(loss=rng.random(), params=int(rng.integers(1, 5)), mem=rng.choice([0.5, 0.5, 2.0]))
        x = dict(loss=y["loss"] + rng.random() * 0.2, params=y["params"] + int(rng.integers(0, 2)), mem=y["mem"])
        vals = np.array([criteria.signed(y), criteria.signed(x)])
        viol = np.array([criteria.violation(y), criteria.violation(x)])
        if not dominance_matrix(vals, viol)[0, 1]:
            continue
        if report(s, f"c{case}y", 1, **y) == STOP:
            assert report(s, f"c{case}x", 1, **x) == STOP
            checked += 1
    assert checked >= 10


def test_the_decision_depends_on_the_recorded_set_not_on_its_arrival_order():
    rng = np.random.default_rng(4)
    for case in range(10):
        points = {f"c{case}r{i:02d}": dict(loss=round(rng.random(), 1), params=int(rng.integers(1, 4)))
                  for i in range(9)}
        tables, decisions = [], []
        for order in (list(points), list(reversed(points)), list(rng.permutation(list(points)))):
            s = MultiObjectiveASHA(LOSS_PARAMS, max_t=9, grace_period=1, reduction_factor=3)
            for key in order:
                report(s, key, 1, **points[key])
            decisions.append(report(s, f"c{case}new", 1, loss=0.3, params=2))
            tables.append([(r["trial_id"], r["position"]) for r in table(s, 1)])
        assert decisions[0] == decisions[1] == decisions[2]
        assert tables[0] == tables[1] == tables[2]


def test_results_missing_a_metric_are_skipped_and_non_finite_values_stopped():
    s = MultiObjectiveASHA(LOSS_PARAMS, max_t=4, grace_period=1, reduction_factor=2)
    assert report(s, "m1", 1, loss=0.5) == CONTINUE  # no params: no decision, not recorded
    assert table(s, 1) == []
    assert report(s, "m2", 1, loss=float("nan"), params=1) == CONTINUE  # empty rung
    assert report(s, "m3", 1, loss=0.5, params=1) == CONTINUE
    assert report(s, "m4", 1, loss=float("nan"), params=1) == STOP
    one = MultiObjectiveASHA(Criteria((Objective("loss"),)), max_t=4, grace_period=1, reduction_factor=2)
    assert report(one, "n1", 1, loss=0.5) == CONTINUE
    assert report(one, "n2", 1, loss=float("nan")) == STOP  # Ray would keep it running
    assert report(one, "n3", 1, loss=0.4) == CONTINUE  # the NaN is not part of the cutoff


def test_stop_last_trials_and_the_result_recorded_at_completion():
    s = MultiObjectiveASHA(LOSS_PARAMS, max_t=2, grace_period=1, reduction_factor=2)
    assert report(s, "f1", 1, loss=0.5, params=1) == CONTINUE
    assert report(s, "f1", 2, loss=0.4, params=1) == STOP  # reached max_t
    s.on_trial_complete(None, trial("f1"), {"training_iteration": 2, "loss": 0.4, "params": 1})
    assert table(s, 2) == [dict(trial_id="f1", position=0, front=0, crowding=math.inf, violation=0.0,
                                decision=FINISHED, loss=0.4, params=1.0)]
    keep = MultiObjectiveASHA(LOSS_PARAMS, max_t=2, grace_period=1, reduction_factor=2, stop_last_trials=False)
    report(keep, "f1", 1, loss=0.5, params=1)
    assert report(keep, "f1", 2, loss=0.4, params=1) == CONTINUE


def test_metric_and_mode_come_from_the_criteria_only():
    s = MultiObjectiveASHA(LOSS_PARAMS)
    assert s.metric == "loss"  # Tune checks that results carry it
    assert s.set_search_properties(None, None) is True
    assert s.set_search_properties("loss", "min") is False  # Tune then raises: metric given twice


def scripted_stream(rng, n_trials, max_t, step, mode):
    """(trial_id, result, is_last) in arrival order: trials start at staggered times and run at
    different speeds, so results interleave; values are rounded to make ties, and some results
    lack the metric."""
    events = []
    for i in range(n_trials):
        clock, level, speed = rng.uniform(0, n_trials), rng.uniform(0.1, 1.0), rng.uniform(0.5, 2.0)
        times = list(range(step, max_t + 1, step))
        for t in times:
            clock += speed * rng.uniform(0.5, 1.5)
            loss = level + 0.5 / t + rng.normal(0, 0.05)
            value = round(loss, 1) if rng.random() < 0.3 else loss
            result = {"training_iteration": t}
            if rng.random() > 0.08:
                result["score"] = value if mode == "min" else -value
            events.append((clock, f"s{i:03d}", result, t == times[-1]))
    events.sort(key=lambda e: e[0])
    return [e[1:] for e in events]


@pytest.mark.parametrize("grace, max_t, eta, stop_last, mode, step", [
    (1, 9, 3, True, "min", 1), (1, 16, 2, True, "max", 1), (1, 100, 4, True, "min", 3),
    (2, 20, 3, False, "min", 1), (1, 27, 3, False, "max", 2), (1, 8, 2.5, True, "min", 1),
])
def test_one_objective_decides_exactly_like_rays_asha(grace, max_t, eta, stop_last, mode, step):
    rng = np.random.default_rng(int(max_t * 10 + eta))
    ours = MultiObjectiveASHA(Criteria((Objective("score", mode),)), max_t=max_t, grace_period=grace,
                              reduction_factor=eta, stop_last_trials=stop_last)
    ray = ASHAScheduler(metric="score", mode=mode, max_t=max_t, grace_period=grace, reduction_factor=eta,
                        stop_last_trials=stop_last)
    stream = scripted_stream(rng, 40, max_t, step, mode)
    for trial_id in dict.fromkeys(tid for tid, _, _ in stream):
        ours.on_trial_add(None, trial(trial_id))
        ray.on_trial_add(None, trial(trial_id))
    ended, early_stops, contested_continues = set(), 0, 0
    for trial_id, result, is_last in stream:
        if trial_id in ended:
            continue
        ray_recorded = sum(len(rec) for _, rec in ray._brackets[0]._rungs)
        decision = ours.on_trial_result(None, trial(trial_id), dict(result))
        assert decision == ray.on_trial_result(None, trial(trial_id), dict(result)), (trial_id, result)
        grew = sum(len(rec) for _, rec in ray._brackets[0]._rungs) > ray_recorded
        early_stops += decision == STOP and result["training_iteration"] < max_t
        contested_continues += decision == CONTINUE and grew
        if decision == STOP or is_last:
            ours.on_trial_complete(None, trial(trial_id), dict(result))
            ray.on_trial_complete(None, trial(trial_id), dict(result))
            ended.add(trial_id)
    sign = 1.0 if mode == "max" else -1.0
    ray_tables = {m: rec for m, rec in ray._brackets[0]._rungs if m <= max_t}
    our_tables = {tab["milestone"]: {r["trial_id"]: sign * r["score"] for r in tab["rows"]}
                  for tab in ours.rung_tables()}
    assert our_tables == ray_tables
    assert early_stops >= 5 and contested_continues >= 10  # the stream exercised both outcomes


def drive(scheduler, results):
    return [report(scheduler, tid, t, **m) for tid, t, m in results]


def test_state_survives_pickling_save_and_restore(tmp_path):
    rng = np.random.default_rng(5)
    criteria = Criteria(LOSS_PARAMS.objectives, (Constraint("mem", "<=", 1),))
    results = [(f"p{i:02d}", t, dict(loss=rng.random(), params=int(rng.integers(1, 9)), mem=rng.choice([0.5, 2])))
               for t in (1, 3) for i in range(12)]
    first, rest = results[:14], results[14:]
    s = MultiObjectiveASHA(criteria, max_t=9, grace_period=1, reduction_factor=3)
    drive(s, first)
    clone = pickle.loads(pickle.dumps(s))
    s.save(str(tmp_path / "scheduler.pkl"))
    restored = MultiObjectiveASHA(criteria, max_t=9, grace_period=1, reduction_factor=3)
    restored.restore(str(tmp_path / "scheduler.pkl"))
    assert clone.rung_tables() == restored.rung_tables() == s.rung_tables()
    expected = drive(s, rest)
    assert STOP in expected and CONTINUE in expected
    assert drive(clone, rest) == expected and drive(restored, rest) == expected
    assert clone.rung_tables() == restored.rung_tables() == s.rung_tables()
    assert s.debug_string() == restored.debug_string()
    with pytest.raises(ValueError, match="rungs"):
        MultiObjectiveASHA(criteria, max_t=27, grace_period=1, reduction_factor=3).set_state(s.get_state())


@pytest.mark.slow
def test_rung_tables_survive_tuner_restore(tmp_path, monkeypatch):
    """A real Tune experiment: the state callback brings the rung tables back on Tuner.restore."""
    import ray
    from ray import tune

    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    class Snapshot(tune.Callback):  # writes the scheduler's tables when the experiment ends
        def __init__(self, scheduler, path):
            self.scheduler, self.path = scheduler, path

        def on_experiment_end(self, trials, **info):
            self.path.write_text(json.dumps(self.scheduler.rung_tables()))

    def trainable(config):
        for i in range(1, 5):
            tune.report({"loss": config["q"] / i, "params": config["p"]})

    scheduler = MultiObjectiveASHA(LOSS_PARAMS, max_t=4, grace_period=1, reduction_factor=2)
    snapshot = tmp_path / "tables.json"
    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False)
    try:
        tuner = tune.Tuner(
            trainable,
            param_space={"q": tune.grid_search([0.5, 0.6, 0.4, 0.3, 0.35]), "p": tune.grid_search([100, 300])},
            tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
            run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path), verbose=0,
                                      callbacks=[scheduler.state_callback(), Snapshot(scheduler, snapshot)]),
        )
        tuner.fit()
        before = json.loads(snapshot.read_text())
        snapshot.unlink()
        tune.Tuner.restore(str(tmp_path / "exp"), trainable).fit()
        after = json.loads(snapshot.read_text())
    finally:
        ray.shutdown()
    assert sum(len(tab["rows"]) for tab in before) >= 10
    assert any(r["decision"] == STOP for tab in before for r in tab["rows"])
    assert after == before
