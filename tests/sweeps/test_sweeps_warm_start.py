"""Warm start: earlier trial runs mapped onto a conditional space (strategy-specific lr range),
skipped for the right reasons, added to the Optuna study; and end to end, from a real earlier
stand-in sweep in a real MLflow server, with the no-duplicate rule."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from ray.tune.utils.util import unflatten_dict

from sweeps.space_file import load_space
from sweeps.trial_setup import TrialSetup, overrides_for
from sweeps.warm_start import (
    REUSED_ATTR,
    REUSED_TAG,
    WARM_START_ATTR,
    WARM_START_TAG,
    EarlierTrial,
    WarmStart,
    add_to_study,
    map_run,
)
from tracking.params import flatten_params

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "standin_sweep.py"

SPACE = textwrap.dedent("""\
    name: {name}
    budget: {{num_samples: {n}, max_epochs: 2}}
    resources: {{cpus_per_trial: 1}}
    asha: {{grace_period: 2, reduction_factor: 2}}
    sampler: {{seed: {seed}, n_startup_trials: 2}}
    base_config:
      overrides: {{train.steps_per_epoch: 2}}
    strategies:
      A: {{}}
      C:
        optim.lr: {{type: float, low: 1.0e-4, high: {c_high}, log: true}}
    parameters:
      lora.rank: {{type: int, low: 4, high: 12}}
      lora.alpha_ratio: {{choices: [1, 2]}}
      lora.dropout: {dropout}
      optim.lr: {{type: float, low: 3.0e-4, high: 1.0e-2, log: true}}
    {extra}""")


def space_of(tmp_path, name="s", *, c_high="1.0e-3", dropout="{choices: [0.0, 0.1]}", n=4, seed=0, extra="",
             max_epochs=None):
    text = SPACE.format(name=name, n=n, seed=seed, c_high=c_high, dropout=dropout, extra=extra)
    if max_epochs:
        text = text.replace("max_epochs: 2", f"max_epochs: {max_epochs}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return load_space(path, validate_config=False)


def logged_run(tmp_path, space, params, *, status="completed", windows="w1", phase="search", abs_rel=0.2):
    """(params, metrics, tags) as the sweep logs a trial of `space` with these Optuna parameters."""
    constants = space.define_by_run()(optuna.trial.FixedTrial(params))
    setup = TrialSetup(space=space, fixed_overrides={"eval.max_windows": 4}, tracking_uri=None, experiment="e",
                       parent_run_id=None, sweep_dir=str(tmp_path))
    logged = flatten_params(overrides_for(unflatten_dict({**params, **constants}), setup, "t1"))
    logged.update({"lora.trainable_params": "64", "val.num_views": "2"})
    tags = {"trial.status": status, "val.windows_hash": windows, "sweep.phase": phase}
    return logged, {"val/abs_rel": abs_rel, "val/delta1": 0.8}, tags


C_RUN = {"lora/strategy": "C", "lora/rank": 8, "lora/alpha_ratio": 2, "lora/dropout": 0.0,
         "by_strategy/C/optim/lr": 5e-4}
A_RUN = {"lora/strategy": "A", "lora/rank": 6, "lora/alpha_ratio": 1, "lora/dropout": 0.1, "optim/lr": 2e-3}
FIXED = {"eval.max_windows": 4}


def test_runs_map_onto_the_conditional_space_with_the_space_types(tmp_path):
    space = space_of(tmp_path)
    for params in (C_RUN, A_RUN):
        mapped, metrics = map_run(*logged_run(tmp_path, space, params), space, FIXED, "w1")
        assert mapped == params
        assert type(mapped["lora/rank"]) is int and type(mapped["lora/alpha_ratio"]) is int  # not "8", not 2.0
        assert metrics["adapter/trainable_params"] == 64.0  # from the param of runs logged before the metric


@pytest.mark.parametrize("change,run_kwargs,params,reason", [
    (dict(c_high="4.0e-4"), {}, C_RUN, "outside the space's ranges or choices"),  # C's own lr range shrank
    ({}, dict(windows="w2"), C_RUN, "scored on other validation windows"),
    ({}, dict(status="early_stopped"), C_RUN, "unfinished"),
    ({}, dict(phase="confirm"), C_RUN, "a confirm-phase repeat (another seed)"),
    (dict(dropout="0.0"), {}, A_RUN, "a different fixed value"),  # dropout 0.1 then, fixed at 0.0 now
    (dict(max_epochs=3), {}, C_RUN, "a different fixed value"),  # trained for another number of epochs
    (dict(extra="base_config:\n  overrides: {train.steps_per_epoch: 3}\n"), {}, C_RUN, "a different fixed value"),
    (dict(extra="objectives: [{metric: val/abs_rel}, {metric: val/tau103}]\n"), {}, C_RUN,
     "missing an objective or constraint metric"),
])
def test_skipped_runs_say_why(tmp_path, change, run_kwargs, params, reason):
    earlier = space_of(tmp_path, "earlier")
    run = logged_run(tmp_path, earlier, params, **run_kwargs)
    if "base_config" in change.get("extra", ""):
        text = (tmp_path / "earlier.yaml").read_text().replace("train.steps_per_epoch: 2", "train.steps_per_epoch: 3")
        (tmp_path / "now.yaml").write_text(text)
        current = load_space(tmp_path / "now.yaml", validate_config=False)
    else:
        current = space_of(tmp_path, "now", **change)
    assert map_run(*run, current, FIXED, "w1") == reason
    assert map_run(*logged_run(tmp_path, earlier, params), earlier, FIXED, "w1") != reason  # as it was: usable


def test_a_parameter_the_earlier_sweep_left_at_its_default_maps_to_that_default(tmp_path):
    earlier = space_of(tmp_path, "earlier")
    space_of(tmp_path, "now")
    text = (tmp_path / "now.yaml").read_text() + "  optim.weight_decay: {type: float, low: 0.0, high: 0.05}\n"
    (tmp_path / "now.yaml").write_text(text)
    current = load_space(tmp_path / "now.yaml", validate_config=False)
    mapped, _ = map_run(*logged_run(tmp_path, earlier, C_RUN), current, FIXED, "w1")
    assert mapped == {**C_RUN, "optim/weight_decay": 0.01}  # lora_train's default, which it trained with


def test_added_trials_use_the_current_distributions_and_tpe_samples_after_them(tmp_path):
    space = space_of(tmp_path, c_high="6.0e-4",
                     extra="objectives: [{metric: val/abs_rel}, {metric: adapter/trainable_params}]\n"
                           "constraints: ['val/delta1 >= 0.85']\n")
    earlier = [EarlierTrial("r1", "old", C_RUN, {"val/abs_rel": 0.2, "adapter/trainable_params": 64, "val/delta1": 0.8}),
               EarlierTrial("r2", "old", A_RUN, {"val/abs_rel": 0.3, "adapter/trainable_params": 48, "val/delta1": 0.9})]
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=1, multivariate=True,
                                                                   group=True, constant_liar=True))
    assert add_to_study(study, space, earlier) == 2
    first, second = study.trials
    assert first.state.name == "COMPLETE" and first.values == [0.2, 64.0]
    assert first.user_attrs[WARM_START_ATTR] == "r1"
    assert first.distributions["by_strategy/C/optim/lr"].high == 6e-4  # the current space's, not the old one's
    assert "optim/lr" not in first.params and second.params["optim/lr"] == 2e-3
    assert first.constraints == {"val/delta1 >= 0.85": pytest.approx(0.05)} and second.constraints["val/delta1 >= 0.85"] < 0
    search = space.define_by_run()
    for _ in range(4):  # the sampler proposes in the same space, conditional names and all
        trial = study.ask()
        search(trial)
        study.tell(trial, [0.25, 50.0])


def test_no_duplicate_unless_asked():
    earlier = EarlierTrial("r1", "old", C_RUN, {})
    assert WarmStart([earlier]).duplicate_of(dict(C_RUN)) is earlier
    assert WarmStart([earlier]).duplicate_of({**C_RUN, "lora/rank": 9}) is None
    assert WarmStart([earlier], rerun_duplicates=True).duplicate_of(dict(C_RUN)) is None


def run_standin(args, **kwargs):
    env = {**os.environ, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300", "STANDIN_EPOCH_S": "0.2"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, str(STANDIN), *args], env=env, capture_output=True, text=True, **kwargs)


@pytest.mark.slow
def test_warm_start_from_a_real_earlier_sweep(tmp_path, sweep_mlflow, sweep_env):
    from tracking.runs import SweepTracker

    point = "points_to_evaluate:\n  - {lora.strategy: C, lora.rank: 8, lora.alpha_ratio: 2, optim.lr: 5.0e-4}\n"
    old = space_of(tmp_path, "ws-old", n=4, extra=point.replace("optim.lr", "lora.dropout: 0.0, optim.lr")
                   + "  - {lora.strategy: C, lora.rank: 6, optim.lr: 9.0e-4}\n")
    store = str(tmp_path / "store")
    flags = ["--storage-path", store, "--tracking-uri", sweep_mlflow, "--max-concurrent", "2"]
    proc = run_standin(["--space", str(old.path), *flags], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    earlier = SweepTracker(sweep_mlflow, "ws-old", create=False)
    runs = earlier.trial_runs()
    assert len(runs) == 4 and all(r.data.tags["trial.status"] == "completed" for r in runs)  # no early stopping
    other_windows = next(r for r in runs if r.data.params["optim.lr"] not in ("0.0005", "0.0009"))
    earlier.client.set_tag(other_windows.info.run_id, "val.windows_hash", "scored-elsewhere")

    # Now: C's lr range shrinks to [1e-4, 6e-4], dropout is fixed at 0.0, TPE starts from the point.
    new = space_of(tmp_path, "ws-new", n=2, seed=1, c_high="6.0e-4", dropout="0.0", extra=point)
    expected = {"used": 0, "scored on other validation windows": 0, "outside the space's ranges or choices": 0,
                "a different fixed value": 0}
    for run in runs:
        params = run.data.params
        if run.info.run_id == other_windows.info.run_id:
            expected["scored on other validation windows"] += 1
        elif params["lora.strategy"] == "C" and float(params["optim.lr"]) > 6e-4:
            expected["outside the space's ranges or choices"] += 1
        elif params["lora.dropout"] != "0.0":
            expected["a different fixed value"] += 1
        else:
            expected["used"] += 1
    assert expected["used"] >= 1 and expected["outside the space's ranges or choices"] >= 1

    proc = run_standin(["--space", str(new.path), *flags, "--warm-start", "ws-old"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    skipped = sum(v for k, v in expected.items() if k != "used")
    reasons = ", ".join(f"{n} {k}" for k, n in sorted(expected.items()) if k != "used" and n)
    assert f"warm start: {expected['used']} earlier trial(s) used, {skipped} skipped ({reasons})" in proc.stdout

    tracker = SweepTracker(sweep_mlflow, "ws-new", create=False)
    parent = tracker.client.get_run(tracker.require_parent())
    assert parent.data.tags[WARM_START_TAG] == str(expected["used"])
    study = optuna.load_study(study_name="ws-new", storage=f"sqlite:///{tmp_path / 'store' / 'ws-new' / 'optuna.db'}")
    warm = [t for t in study.trials if WARM_START_ATTR in t.user_attrs]
    proposed = [t for t in study.trials if t not in warm]
    assert len(warm) == expected["used"] and max(t.datetime_start for t in warm) < min(
        t.datetime_start for t in proposed)  # added before the first proposal
    assert all(t.state.name == "COMPLETE" and t.distributions.get("by_strategy/C/optim/lr", None) in (
        None, optuna.distributions.FloatDistribution(1e-4, 6e-4, log=True)) for t in warm)

    # The point was finished by the earlier sweep: reused (replayed), not trained again.
    source = next(r for r in runs if r.data.params["optim.lr"] == "0.0005" and r.data.params["lora.rank"] == "8")
    reused = [r for r in tracker.trial_runs() if REUSED_TAG in r.data.tags]
    assert [r.data.tags[REUSED_TAG] for r in reused] == [source.info.run_id]
    run = reused[0]
    assert run.data.tags["trial.status"] == "completed"
    history = lambda t, r: [(m.step, m.value) for m in t.metric_history(r.info.run_id, "val/abs_rel")]  # noqa: E731
    assert history(tracker, run) == history(earlier, source)
    trial_dir = tmp_path / "store" / "ws-new" / "trials" / run.data.tags["ray.trial_id"]
    assert not (trial_dir / "checkpoints").exists()  # the stand-in trainer never ran for it
    record = json.loads((trial_dir / "reused_result.json").read_text())
    assert record["run_id"] == source.info.run_id and len(record["epochs"]) == 2
    told = [t for t in study.trials if t.user_attrs.get(REUSED_ATTR) == source.info.run_id]
    assert len(told) == 1 and told[0].state.name == "COMPLETE" and told[0].values == [source.data.metrics["val/abs_rel"]]
