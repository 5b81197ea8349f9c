"""Objectives, constraints and the champion rule in the space file: parsing, file:line errors, the
metric catalogue, and the champion rule's ordering."""

import math
import textwrap

import pytest

from lora_train.errors import UserError
from sweeps.pareto import ChampionRule, Constraint, Criteria, Objective, metric_problem
from sweeps.space_file import load_space

BASE = textwrap.dedent("""\
    name: crit
    budget: {num_samples: 3, max_epochs: 2}
    strategies: {A: {}}
    parameters:
      lora.rank: {type: int, low: 4, high: 16}
    """)
MULTI = BASE + textwrap.dedent("""\
    objectives:
      - {metric: val/abs_rel, mode: min}
      - {metric: adapter/trainable_params}
      - {metric: val/delta1, mode: max, scale: linear}
    constraints:
      - cost/peak_mem_mb <= 4096
      - val/delta1>=0.5
    champion:
      metric: val/delta1
      subject_to: ["cost/cpu_seconds <= 600"]
    """)


def load(tmp_path, text, **kwargs):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return load_space(path, validate_config=False, **kwargs), path


def test_objectives_constraints_and_champion_rule(tmp_path):
    space, _ = load(tmp_path, MULTI)
    assert space.criteria == Criteria(
        (Objective("val/abs_rel"), Objective("adapter/trainable_params", scale="log"),
         Objective("val/delta1", "max")),
        (Constraint("cost/peak_mem_mb", "<=", 4096), Constraint("val/delta1", ">=", 0.5)))
    assert (space.metric, space.mode) == ("val/abs_rel", "min")  # the primary objective
    # the champion's mode comes from its objective; subject_to adds to the sweep's constraints
    assert space.champion_rule == ChampionRule("val/delta1", "max", (Constraint("cost/cpu_seconds", "<=", 600),))
    summary = space.summary()
    assert summary["objectives"] == "val/abs_rel min, adapter/trainable_params min, val/delta1 max"
    assert summary["constraints"] == "cost/peak_mem_mb <= 4096, val/delta1 >= 0.5"


def test_a_file_with_only_metric_and_mode_keeps_working(tmp_path):
    space, _ = load(tmp_path, BASE + "metric: val/delta1\nmode: max\n")
    assert space.objectives == () and space.constraints == () and space.champion is None
    assert space.criteria == Criteria((Objective("val/delta1", "max"),))
    assert space.champion_rule == ChampionRule("val/delta1", "max")
    assert "objectives" not in space.summary() and "champion" not in space.summary()


BAD = [
    # (replace this, with this, expected "line: key: message" part)
    ("  - {metric: adapter/trainable_params}", "  - {metric: adapter/size}",
     ":8: objectives[1].metric: unknown metric 'adapter/size'"),
    ("  - {metric: adapter/trainable_params}", "  - {metric: val/}", ":8: objectives[1].metric: unknown metric 'val/'"),
    ("  - cost/peak_mem_mb <= 4096", "  - cost/peak_gpu_gib <= 24",
     ":11: constraints[0]: cost/peak_gpu_gib is reported by GPU trials only"),
    ("  - cost/peak_mem_mb <= 4096", "  - cost/peak_mem_mb < 4096", ":11: constraints[0]: constraint cost/peak_mem_mb: "
                                                                      "operator must be <= or >=, got '<'"),
    ("  - cost/peak_mem_mb <= 4096", "  - cost/peak_mem_mb == 4096", ":11: constraints[0]: constraint cost/peak_mem_mb: "
                                                                       "operator must be <= or >=, got '=='"),
    ("  - val/delta1>=0.5", "  - val/delta1 >= half", ":12: constraints[1]: constraint 'val/delta1 >= half': "
                                                       "bound 'half' is not a number"),
    ("  - val/delta1>=0.5", "  - val/delta1 >= inf", ":12: constraints[1]: constraint val/delta1: bound must be a finite"),
    ("  - val/delta1>=0.5", "  - {val/delta1: 0.5}", ":12: constraints[1]: constraint {'val/delta1': 0.5}: expected"),
    ("  - val/delta1>=0.5", "  - train/loss <= 1", ":12: constraints[1]: unknown metric 'train/loss'"),
    ("  - {metric: val/delta1, mode: max, scale: linear}", "  - {metric: val/abs_rel}",
     ":9: objectives[2].metric: val/abs_rel is already an objective"),
    ("  - {metric: val/delta1, mode: max, scale: linear}", "  - {metric: val/delta1, mode: up}",
     ":9: objectives[2].mode: expected min or max, got 'up'"),
    ("  - {metric: val/delta1, mode: max, scale: linear}", "  - {metric: val/delta1, scale: sqrt}",
     ":9: objectives[2].scale: expected linear or log, got 'sqrt'"),
    ("  - {metric: val/delta1, mode: max, scale: linear}", "  - {mode: max}", ":9: objectives[2]: missing 'metric'"),
    ("  - {metric: val/delta1, mode: max, scale: linear}", "  - {metric: val/delta1, goal: max}",
     ":9: objectives[2].goal: unknown key"),
    ("objectives:\n", "metric: val/abs_rel\nobjectives:\n", ":7: objectives: give either objectives or metric/mode"),
    ("  metric: val/delta1\n", "  metric: cost/cpu_seconds\n", ":13: champion: missing 'mode': cost/cpu_seconds is not"),
    ("  metric: val/delta1\n", "  metric: val/delta1\n  mode: best\n", ":15: champion.mode: expected min or max"),
    ("  metric: val/delta1\n", "  metric: retention/\n", ":14: champion.metric: unknown metric 'retention/'"),
    ("  - {metric: adapter/trainable_params}", "  - {metric: retention/abs_rel_delta}",
     ":8: objectives[1].metric: retention/abs_rel_delta comes with a trial's last result only"),
    ('  subject_to: ["cost/cpu_seconds <= 600"]', '  subject_to: ["cost/gpu_seconds <= 600"]',
     ":15: champion.subject_to[0]: cost/gpu_seconds is reported by GPU trials only"),
    ("budget: {num_samples: 3, max_epochs: 2}", "budget: {num_samples: 3, max_epochs: 2}\nasha: {brackets: 2}",
     ":3: asha.brackets: the sweep's ASHA (sweeps/schedulers.py) has one bracket"),
]


@pytest.mark.parametrize("old,new,expected", BAD, ids=[b[2].split(": ", 1)[1][:40] for b in BAD])
def test_bad_criteria_are_one_line_errors_with_file_and_line(tmp_path, old, new, expected):
    assert MULTI.count(old) == 1
    with pytest.raises(UserError) as err:
        load(tmp_path, MULTI.replace(old, new))
    assert str(err.value).startswith(f"{tmp_path / 'space.yaml'}{expected}"), str(err.value)


def test_an_unknown_legacy_metric_is_an_error_too(tmp_path):
    with pytest.raises(UserError, match=r"space.yaml:6: metric: unknown metric 'val_abs_rel'"):
        load(tmp_path, BASE + "metric: val_abs_rel\n")


def test_gpu_flag_rechecks_where_metrics_are_reported(tmp_path):
    space, _ = load(tmp_path, MULTI)  # CPU trials; constraint on cost/cpu_seconds (champion)
    with pytest.raises(UserError, match=r"^--gpus-per-trial: cost/cpu_seconds is reported by CPU trials only"):
        space.with_overrides(gpus_per_trial=1)
    gpu, _ = load(tmp_path, MULTI.replace("cost/cpu_seconds", "cost/gpu_seconds").replace(
        "budget:", "resources: {gpus_per_trial: 1}\nbudget:"))
    assert gpu.champion_rule.subject_to[0].metric == "cost/gpu_seconds"


def test_bad_constraint_exits_2_from_the_command_line(tmp_path, capsys):
    from sweeps.run import main

    path = tmp_path / "space.yaml"
    path.write_text(MULTI.replace("cost/peak_mem_mb <= 4096", "cost/peak_mem_mb <= 4 GiB"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--space", str(path), "--storage-path", str(tmp_path / "store"), "--tracking-uri", "http://127.0.0.1:9"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: {path}:11: constraints[0]: constraint 'cost/peak_mem_mb <= 4 GiB': expected "
                     "'METRIC <= BOUND' or 'METRIC >= BOUND'"]
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("name,on_gpu,ok", [
    ("val/abs_rel", False, True), ("val/tau103", True, True), ("adapter/trainable_params", True, True),
    ("cost/cpu_seconds", False, True), ("cost/cpu_seconds", True, False), ("cost/peak_gpu_gib", True, True),
    ("cost/peak_gpu_gib", False, False), ("time/wall_s", False, True), ("val", False, False), ("", False, False),
    ("eval/adapter_abs_rel", False, False),  # with the last result only: no objective
])
def test_metric_catalogue(name, on_gpu, ok):
    assert (metric_problem(name, on_gpu=on_gpu) is None) is ok


def test_final_evaluation_metrics_are_constraints_asha_leaves_to_the_end(tmp_path):
    assert metric_problem("retention/abs_rel_delta", on_gpu=False, final_ok=True) is None
    assert metric_problem("eval/abs_rel_delta", on_gpu=True, final_ok=True) is None
    space, _ = load(tmp_path, MULTI.replace("  - val/delta1>=0.5", "  - retention/abs_rel_delta <= 0.02"))
    assert space.criteria.constraints[1] == Constraint("retention/abs_rel_delta", "<=", 0.02)
    assert space.criteria.at_rungs().constraints == (Constraint("cost/peak_mem_mb", "<=", 4096),)
    assert space.criteria.at_rungs().objectives == space.criteria.objectives


def test_champion_rule_feasible_first_then_its_metric():
    rows = {
        "a": {"val/abs_rel": 0.20, "mem": 10, "size": 5},
        "b": {"val/abs_rel": 0.15, "mem": 30, "size": 5},   # best, violates the sweep's constraint
        "c": {"val/abs_rel": 0.25, "mem": 10, "size": 1},
        "d": {"val/abs_rel": 0.18, "mem": 10, "size": 50},  # violates subject_to
        "e": {"mem": 10, "size": 1},                        # no value: last among the feasible
        "f": {"val/abs_rel": math.nan, "mem": 12, "size": 1},
        "g": {"val/abs_rel": 0.30, "mem": 40, "size": 5},   # violates by more than b
    }
    constraints = (Constraint("mem", "<=", 20),)
    rule = ChampionRule("val/abs_rel", "min", (Constraint("size", "<=", 10),))
    # infeasible by total violation: b 10/20 = 0.5, g 20/20 = 1.0, d 40/10 = 4.0
    assert rule.order(rows, constraints) == ["a", "c", "e", "f", "b", "g", "d"]
    assert ChampionRule("val/abs_rel").order(rows) == ["b", "d", "a", "c", "g", "e", "f"]
    assert ChampionRule("val/abs_rel", "max").order({k: rows[k] for k in "abc"}) == ["c", "a", "b"]


def test_search_ranking_applies_the_champion_rule():
    from sweeps.selection import SearchTrial, search_ranking

    trials = [SearchTrial("t0", {"val/abs_rel": 0.15, "adapter/trainable_params": 9e5}, "h"),
              SearchTrial("t1", {"val/abs_rel": 0.18, "adapter/trainable_params": 1e4}, "h"),
              SearchTrial("t2", {"val/abs_rel": 0.17, "adapter/trainable_params": 2e4}, "h"),
              SearchTrial("t3", {"val/abs_rel": 0.16, "adapter/trainable_params": 5e4}, "other windows"),
              SearchTrial("t4", {"val/abs_rel": 0.10, "adapter/trainable_params": 1e3}, "h", "failed"),
              SearchTrial("t5", {"adapter/trainable_params": 1e3}, "h")]
    sweep_constraints = (Constraint("adapter/trainable_params", "<=", 1e5),)
    rule = ChampionRule("val/abs_rel", "min", (Constraint("adapter/trainable_params", "<=", 1.5e4),))

    def ids(**kwargs):
        return [t.trial_id for t in search_ranking(trials, "val/abs_rel", "min", "h", **kwargs)]

    assert ids() == ["t0", "t2", "t1"]
    assert ids(rule=ChampionRule("val/abs_rel"), constraints=sweep_constraints) == ["t2", "t1", "t0"]
    # t2 violates subject_to by 0.33, t0 both constraints by 8 + 59
    assert ids(rule=rule, constraints=sweep_constraints) == ["t1", "t2", "t0"]


def test_every_epoch_result_carries_the_criteria_metrics(tmp_path):
    """Rank 0's reporter: the adapter size (counted in the first checkpoint) in every result, the
    GPU memory in GiB on GPU trials, NaN for a criteria metric the epoch lacks."""
    import torch
    from safetensors.torch import save_file

    from sweeps.trial_reporter import TrialReporter
    from sweeps.trial_setup import ReportChannel

    checkpoint = tmp_path / "epoch_0001"
    checkpoint.mkdir()
    save_file({"a": torch.zeros(4, 8), "b": torch.zeros(8, 2)}, str(checkpoint / "adapter_model.safetensors"))
    channel = ReportChannel(tmp_path / "reports")
    reporter = TrialReporter(channel, None, None, tmp_path, "val/abs_rel", "min",
                             report_metrics=("val/abs_rel", "adapter/trainable_params", "val/delta1"))
    reporter.on_epoch(1, {"val/abs_rel": 0.3, "cost/gpu_seconds": 5.0, "cost/peak_mem_mb": 2048.0}, str(checkpoint))
    reporter.on_epoch(2, {"val/abs_rel": 0.2, "val/delta1": 0.7}, None)
    first, second = channel.read_new()
    assert first["adapter/trainable_params"] == second["adapter/trainable_params"] == 48.0
    assert first["cost/peak_gpu_gib"] == 2.0 and "cost/peak_gpu_gib" not in second
    assert math.isnan(first["val/delta1"]) and second["val/delta1"] == 0.7
