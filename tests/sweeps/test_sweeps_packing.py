"""Memory-aware GPU packing (`resources.gpus_per_trial: auto`, sweeps/packing.py) and the
out-of-memory retries of a trial (sweeps/trial.py), on CPU.

The unit tests check the GPU share each trial config asks Ray for. The slow test runs one real
sweep (tiny VGGT, real training on CPU, real Ray and MLflow) on a Ray node that declares one GPU
(`RAY_OVERRIDE_RESOURCES`; the trials still compute on the CPU): Ray must run exactly as many
trials at once as their GPU shares allow, and trials whose injected out-of-memory error
(`train.inject_oom_above_gib`: a simulated GPU of that size) goes away with gradient checkpointing,
or with half the micro-batch, must finish with `trial.oom_retries` 1 and 2; one that fits nowhere
ends failed with a one-line reason.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lora_train.config import load_config
from lora_train.errors import UserError
from lora_train.memory import gpu_fraction, predict_peak_gib
from sweeps.packing import PackedResources, oom_fallback, trial_resources
from sweeps.space_file import load_space
from sweeps.trial_setup import TrialSetup
from tests.plugins.ray_fixtures import run_sweep_cli

REPO = Path(__file__).resolve().parents[2]
H200_GIB = 139.8

VGGT1B_SPACE = textwrap.dedent("""\
    name: packed
    resources: {gpus_per_trial: auto, gpu_memory_gib: GPU_GIB, cpus_per_trial: 2}
    validation: {num_views: 2, width: 56}
    base_config:
      overrides:
        model.preset: vggt1b
        model.checkpoint: null
        model.base_dtype: fp32
        model.overrides.enable_point: false
        data.num_views: 8
        data.width: 518
        lora.rank: 16
    strategies: {A: {}, B: {}, C: {}}
    parameters:
      model.gradient_checkpointing: {choices: [false, true]}
    """)


def packed_space(tmp_path, gpu_gib=H200_GIB):
    path = tmp_path / "space.yaml"
    path.write_text(VGGT1B_SPACE.replace("GPU_GIB", str(gpu_gib)))
    return load_space(path)


def setup_for(space):
    return TrialSetup(space=space, fixed_overrides={}, tracking_uri=None, experiment="x", parent_run_id=None,
                      sweep_dir="unused")


def trial(strategy, checkpointing):
    return {"lora": {"strategy": strategy}, "model": {"gradient_checkpointing": checkpointing}}


def test_auto_in_the_space_file_and_on_the_command_line(tmp_path):
    space = packed_space(tmp_path)
    assert space.pack_gpus and space.gpus_per_trial == 1.0 and space.gpu_memory_gib == H200_GIB
    assert not space.with_overrides(gpus_per_trial=2.0).pack_gpus
    plain = space.with_overrides(gpus_per_trial=1.0)
    assert plain.with_overrides(gpus_per_trial="auto").pack_gpus
    with pytest.raises(UserError, match="--gpus-per-trial: gpus_per_trial auto sizes one-process trials"):
        space.with_overrides(workers_per_trial=2, gpus_per_trial="auto")
    bad = tmp_path / "bad.yaml"
    bad.write_text(VGGT1B_SPACE.replace("GPU_GIB", "-3"))
    with pytest.raises(UserError, match=r"bad.yaml:2: resources.gpu_memory_gib: must be > 0"):
        load_space(bad)
    out = subprocess.run([sys.executable, str(REPO / "sweeps" / "run.py"), "--space", str(bad), "--gpus-per-trial",
                          "most"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "expected a number or auto, got 'most'" in out.stderr


@pytest.mark.parametrize("gpu_gib,expected", [
    (H200_GIB, {("A", False): 0.125, ("A", True): 0.125, ("B", False): 0.25, ("B", True): 0.125,
                ("C", False): 0.25, ("C", True): 0.125}),
    (24.0, {("A", False): 0.625, ("A", True): 0.625, ("B", False): 1.0, ("B", True): 0.625,
            ("C", False): 1.0, ("C", True): 0.625}),
])
def test_each_trial_asks_for_the_gpu_share_of_its_predicted_peak(tmp_path, gpu_gib, expected):
    space = packed_space(tmp_path, gpu_gib)
    resources = trial_resources(space, setup_for(space))
    assert isinstance(resources, PackedResources)
    for (strategy, checkpointing), share in expected.items():
        config = load_config(None, {**space.base_overrides, "lora.strategy": strategy,
                                    "model.gradient_checkpointing": checkpointing})
        predicted = predict_peak_gib(config)
        request = resources(trial(strategy, checkpointing))  # a real PlacementGroupFactory
        print(f"{gpu_gib} GiB GPU: {strategy} checkpointing={checkpointing}: {predicted:.1f} GiB → {request.bundles}")
        assert request.bundles == [{"CPU": 2.0, "GPU": share}]
        assert share == gpu_fraction(predicted, gpu_gib)


def test_fixed_resources_without_auto(tmp_path):
    space = packed_space(tmp_path).with_overrides(gpus_per_trial=0.5)
    assert trial_resources(space, setup_for(space)) == {"CPU": 2, "GPU": 0.5}


def test_out_of_memory_fallbacks_keep_the_global_batch():
    config = load_config("tiny_demo", {"data.batch_size": 4, "optim.grad_accum_steps": 3})
    assert oom_fallback(config) == {"model.gradient_checkpointing": True}
    config = load_config("tiny_demo", {"data.batch_size": 4, "optim.grad_accum_steps": 3,
                                       "model.gradient_checkpointing": True})
    assert oom_fallback(config) == {"data.batch_size": 2, "optim.grad_accum_steps": 6}
    config = load_config("tiny_demo", {"data.batch_size": 1, "model.gradient_checkpointing": True})
    assert oom_fallback(config) is None


# --- one packed sweep with injected out-of-memory errors ----------------------------------------------

TINY = {"model.preset": "tiny", "model.checkpoint": "tiny-base", "model.overrides.enable_point": False,
        "data.synthetic_scenes": 4, "data.num_views": 2, "data.width": 56, "data.batch_size": 2,
        "train.steps_per_epoch": 1, "train.device": "cpu", "eval.num_visualizations": 0, "lora.rank": 4}
PACKED_SPACE = textwrap.dedent("""\
    name: packed-oom
    budget: {num_samples: 4, max_epochs: 1}
    resources: {gpus_per_trial: auto, gpu_memory_gib: 4, cpus_per_trial: 1}
    failure: {max_failures: 0}
    validation: {num_views: 2, width: 56, max_windows: 2}
    selection: {top_k: 0}
    base_config: {overrides: OVERRIDES}
    strategies: {B: {}}
    parameters:
      optim.lr: 1.0e-3
      train.inject_oom_above_gib: {choices: CHOICES}
    points_to_evaluate: POINTS
    """)


def oom_thresholds() -> dict[str, float]:
    """Simulated GPU sizes (GiB) between the predicted peaks of the fallback ladder (what
    lora_train.train predicts for these CPU runs, at the synthetic windows' height)."""
    from lora_train.builders import build_datasets

    config = load_config(None, TINY)
    height = build_datasets(config)[0].height

    def peak(**overrides):
        config = load_config(None, {**TINY, "lora.strategy": "B", **overrides})
        return predict_peak_gib(config, device_type="cpu", height=height)

    full = peak()
    checkpointed = peak(**{"model.gradient_checkpointing": True})
    halved = peak(**{"model.gradient_checkpointing": True, "data.batch_size": 1})
    assert halved < checkpointed < full
    return {"retry_once": (checkpointed + full) / 2, "retry_twice": (halved + checkpointed) / 2,
            "never_fits": halved / 2}


@pytest.fixture(scope="module")
def packed_sweep(tmp_path_factory, sweep_mlflow):
    from tracking.runs import SweepTracker

    work = tmp_path_factory.mktemp("packed-sweep")
    thresholds = oom_thresholds()
    choices = [None, *thresholds.values()]
    space = PACKED_SPACE.replace("OVERRIDES", json.dumps(TINY)).replace("CHOICES", json.dumps(choices)).replace(
        "POINTS", json.dumps([{"train.inject_oom_above_gib": value} for value in choices]))
    (work / "space.yaml").write_text(space)
    proc = run_sweep_cli("--space", work / "space.yaml", "--storage-path", work / "store", "--tracking-uri", sweep_mlflow,
                         env_extra={"RAY_OVERRIDE_RESOURCES": json.dumps({"GPU": 1, "CPU": 4})})  # 1 declared GPU, 4 slots
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    tracker = SweepTracker(sweep_mlflow, "packed-oom", create=False)
    runs = {r.data.params["train.inject_oom_above_gib"]: r for r in tracker.trial_runs()}
    return {"proc": proc, "runs": runs, "thresholds": thresholds, "space": load_space(work / "space.yaml")}


@pytest.mark.slow
def test_ray_runs_as_many_trials_at_once_as_their_gpu_shares_allow(packed_sweep):
    runs = list(packed_sweep["runs"].values())
    space = packed_sweep["space"]
    share = PackedResources(space, {}, 4.0).gpu_share({"lora": {"strategy": "B"}})
    assert share == 0.375  # ~0.01 GiB + 10 % + 1 GiB of CUDA context on a 4 GiB GPU: 3/8, two per GPU
    assert {r.data.tags["trial.gpu_share"] for r in runs} == {"0.375"}
    events = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    running, most = 0, 0
    for _, change in events:
        running += change
        most = max(most, running)
    print(f"trials at once: at most {most} (4 trial slots of CPU, one GPU, shares of {share})")
    assert most == 2


@pytest.mark.slow
def test_out_of_memory_trials_are_retried_smaller_or_fail_with_one_line(packed_sweep):
    runs, thresholds = packed_sweep["runs"], packed_sweep["thresholds"]
    fits = runs["None"]
    assert fits.data.tags["trial.status"] == "completed" and fits.data.tags["trial.oom_retries"] == "0"
    assert "cost/predicted_peak_gib" in fits.data.metrics

    once = runs[str(thresholds["retry_once"])]
    assert once.data.tags["trial.status"] == "completed", once.data.tags
    assert once.data.tags["trial.oom_retries"] == "1"
    assert once.data.tags["trial.oom_fallback"] == "model.gradient_checkpointing=True"
    assert once.data.metrics["cost/predicted_peak_gib"] < thresholds["retry_once"]

    twice = runs[str(thresholds["retry_twice"])]
    assert twice.data.tags["trial.status"] == "completed", twice.data.tags
    assert twice.data.tags["trial.oom_retries"] == "2"
    assert twice.data.tags["trial.oom_fallback"] == \
        "model.gradient_checkpointing=True, data.batch_size=1, optim.grad_accum_steps=2"
    assert "val/abs_rel" in twice.data.metrics

    never = runs[str(thresholds["never_fits"])]
    reason = never.data.tags["trial.stop_reason"]
    print("failed trial:", reason)
    assert never.data.tags["trial.status"] == "failed" and "\n" not in reason
    assert reason.startswith("sweeps.trial.TrialOutOfMemory: out of GPU memory with gradient checkpointing True "
                             "and micro-batch 1 after 2 retries: injected: predicted peak")
