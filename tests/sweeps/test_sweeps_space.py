"""Space file: parsing, one-line errors with line numbers, the define-by-run search space."""

import textwrap

import optuna
import pytest

from lora_train.errors import UserError
from sweeps.space import DefineByRun, trial_overrides
from sweeps.space_file import load_space

GOOD = textwrap.dedent("""\
    name: t1
    budget: {num_samples: 3, max_epochs: 2}
    asha: {grace_period: 1, reduction_factor: 2}
    base_config:
      overrides: {train.steps_per_epoch: 2}
    strategies:
      A: {}
      C:
        optim.lr: {type: float, low: 1e-5, high: 1e-4, log: true}
      late:
        lora.target_regex: {type: fixed, value: 'aggregator\\.global_blocks\\.\\d+\\.attn\\.qkv'}
    parameters:
      lora.rank: {type: int, low: 4, high: 16, log: true}
      lora.alpha_ratio: {choices: [1, 2]}
      lora.use_dora: false
      optim.lr: {type: float, low: 3e-4, high: 3e-3, log: true}
    points_to_evaluate:
      - {lora.strategy: C, lora.rank: 8, optim.lr: 5e-5}
    """)


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_space_parses(tmp_path):
    space = load_space(write(tmp_path, GOOD), validate_config=False)
    assert space.name == "t1" and space.metric == "val/abs_rel" and space.mode == "min"
    assert space.num_samples == 3 and space.max_epochs == 2
    assert [s.label for s in space.strategies] == ["A", "C", "late"]
    assert space.strategy("late").train_strategy == "custom"
    assert space.points_to_evaluate == [
        {"lora/strategy": "C", "lora/rank": 8, "by_strategy/C/optim/lr": 5e-5}]


@pytest.mark.parametrize("resources,in_trial", [
    ("{}", True), ("{workers_per_trial: 2}", False), ("{launcher: ray_train}", False),
    ("{launcher: in_trial, gpus_per_trial: 1}", True), ("{launcher: auto, workers_per_trial: 4}", False),
])
def test_launcher_trains_in_the_trial_only_with_one_worker(tmp_path, resources, in_trial):
    space = load_space(write(tmp_path, GOOD.replace("name: t1", f"name: t1\nresources: {resources}")),
                       validate_config=False)
    assert space.runs_in_trial() is in_trial


def test_define_by_run_is_conditional_and_maps_to_overrides(tmp_path):
    space = load_space(write(tmp_path, GOOD), validate_config=False)
    search = space.define_by_run()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        constants = search(trial)
        label = trial.params["lora/strategy"]
        seen.add(label)
        # C gets its own (lower) lr range under a conditional name; the others the general one.
        if label == "C":
            assert "optim/lr" not in trial.params
            assert 1e-5 <= trial.params["by_strategy/C/optim/lr"] <= 1e-4
        else:
            assert 3e-4 <= trial.params["optim/lr"] <= 3e-3
        assert constants["lora/use_dora"] is False
        nested = {}
        for name, value in {**trial.params, **constants}.items():  # what Ray's unflatten does
            *parents, leaf = name.split("/")
            node = nested
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        overrides = trial_overrides(nested, space)
        assert overrides["lora.strategy"] == ("custom" if label == "late" else label)
        assert overrides["lora.alpha"] == trial.params["lora/alpha_ratio"] * trial.params["lora/rank"]
        assert overrides["train.epochs"] == 2 and overrides["train.steps_per_epoch"] == 2
        assert overrides["optim.lr"] == trial.params.get("by_strategy/C/optim/lr", trial.params.get("optim/lr"))
        if label == "late":
            assert overrides["lora.target_regex"].startswith("aggregator")
        assert not any(k.startswith("by_strategy") for k in overrides)
        study.tell(trial, 1.0)
    assert seen == {"A", "C", "late"}


def test_define_by_run_pickles(tmp_path):
    import pickle

    space = load_space(write(tmp_path, GOOD), validate_config=False)
    search = pickle.loads(pickle.dumps(space.define_by_run()))
    assert isinstance(search, DefineByRun)


BAD = [
    # (what to change, expected line, expected words)
    ("budget: {num_samples: 3, max_epochs: 2}", "budget: {num_samples: 3, max_epochs: 2, typo: 1}", 2, "budget.typo: unknown key"),
    ("lora.rank: {type: int, low: 4, high: 16, log: true}", "lora.rank: {type: int, low: 16, high: 4}", 13, "lora.rank: empty range"),
    ("  A: {}", "  D: {}", 7, "unknown strategy 'D'"),
    ("lora.rank: {type: int, low: 4, high: 16, log: true}", "lora.rank: {type: int, low: four, high: 16}", 13, "lora.rank.low: expected an integer"),
    ("lora.alpha_ratio: {choices: [1, 2]}", "lora.alpha_ratio: {choices: []}", 14, "lora.alpha_ratio.choices: empty"),
    ("lora.use_dora: false", "lora.use_dora: {type: boolean}", 15, "unknown type 'boolean'"),
    ("  - {lora.strategy: C, lora.rank: 8, optim.lr: 5e-5}", "  - {lora.strategy: C, lora.rank: 8, optim.lr: 5e-3}", 18, "outside the range"),
    ("  - {lora.strategy: C, lora.rank: 8, optim.lr: 5e-5}", "  - {lora.strategy: Z}", 18, "unknown strategy 'Z'"),
    ("name: t1", "name: t1\nmode: maximize", 2, "mode: expected min or max"),
    ("asha: {grace_period: 1, reduction_factor: 2}", "asha: {grace_period: 5, reduction_factor: 2}", 3, "grace_period 5 exceeds budget.max_epochs 2"),
    ("name: t1", "name: t1\nbudget: {num_samples: 3}", 3, "duplicate key"),
    ("lora.use_dora: false", "lora.use_dora: [true, false]", 15, "a list is ambiguous"),
    ("optim.lr: {type: float, low: 3e-4, high: 3e-3, log: true}", "optim.lr: {type: float, low: 0, high: 3e-3, log: true}", 16, "log range needs low > 0"),
    ("name: t1", "name: t1\n  bad: [", 2, "invalid YAML"),
    ("name: t1", "name: t1\nresources: {launcher: docker}", 2, "resources.launcher: expected one of auto, ray_train, in_trial"),
    ("name: t1", "name: t1\nresources: {workers_per_trial: 2, launcher: in_trial}", 2, "in_trial runs one process"),
    # the validation protocol is one for the whole sweep
    ("name: t1", "name: t1\nvalidation: {num_views: 1}", 2, "validation.num_views: one view has no camera metrics"),
    ("name: t1", "name: t1\nvalidation: {width: 50}", 2, "validation.width: must be a multiple of 14"),
    ("name: t1", "name: t1\nvalidation: {views: 2}", 2, "validation.views: unknown key"),
    ("lora.use_dora: false", "eval.width: {choices: [56, 70]}", 15, "parameters.eval.width: every trial is scored with one validation protocol"),
    ("lora.use_dora: false", "data.root: /data/eth3d", 15, "parameters.data.root: every trial starts from the same data"),
    ("lora.use_dora: false", "data.num_views: {choices: [1, 2]}", 15, "data.num_views: trials with fewer than 2 views"),
    ("  A: {}", "  A: {data.num_views: {type: int, low: 1, high: 3}}", 7, "strategies.A.data.num_views: trials with fewer than 2 views"),
]


@pytest.mark.parametrize("old,new,line,words", BAD, ids=[b[3] for b in BAD])
def test_bad_space_one_line_error_with_line(tmp_path, old, new, line, words):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(UserError) as err:
        load_space(path, validate_config=False)
    message = str(err.value)
    assert "\n" not in message
    assert f"{path}:{line}:" in message, message
    assert words in message, message


def test_camera_metrics_off_allows_single_view_trials(tmp_path):
    text = GOOD.replace("lora.use_dora: false", "data.num_views: {choices: [1, 2]}").replace(
        "name: t1", "name: t1\nvalidation: {num_views: 1, camera_metrics: false, width: 56, max_windows: 4}")
    space = load_space(write(tmp_path, text), validate_config=False)
    assert space.validation == {"num_views": 1, "camera_metrics": False, "width": 56, "max_windows": 4}


def test_protocol_defaults_come_from_the_base_config_once(tmp_path):
    text = GOOD.replace("overrides: {train.steps_per_epoch: 2}",
                        "overrides: {train.steps_per_epoch: 2, data.num_views: 4, data.width: 98}")
    space = load_space(write(tmp_path, text.replace("name: t1", "name: t1\nvalidation: {width: 56}")))
    assert space.protocol_overrides() == {"eval.num_views": 4, "eval.width": 56, "eval.max_windows": None,
                                          "eval.seed": 0, "eval.scenes": None}


def test_missing_file_names_flag(tmp_path):
    with pytest.raises(UserError, match="--space: no such file"):
        load_space(tmp_path / "nope.yaml")


@pytest.mark.parametrize("line,words", [
    ("data.width: {type: int, low: 56, high: 70}", "data.width: every value must be a multiple of 14"),
    ("data.width: {type: int, low: 56, high: 112, step: 7}", "data.width: every value must be a multiple of 14"),
    ("lora.dropout: {choices: [0.0, 1.5, 0.1]}", "lora.dropout: 1.5"),  # an interior choice, not a corner
    ("optim.weight_decay: {type: float, low: -0.1, high: 0.1}", "optim.weight_decay: -0.1"),
])
def test_every_value_a_range_or_choice_can_give_is_checked(tmp_path, line, words):
    path = write(tmp_path, GOOD.replace("lora.use_dora: false", line))
    with pytest.raises(UserError) as err:
        load_space(path)
    assert f"{path}:15:" in str(err.value) and words in str(err.value), str(err.value)


def test_a_width_range_of_multiples_is_accepted(tmp_path):
    load_space(write(tmp_path, GOOD.replace("lora.use_dora: false", "data.width: {type: int, low: 56, high: 112, step: 14}")))
