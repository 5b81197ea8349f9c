"""Run a LoRA sweep: Optuna (define-by-run TPE) under ASHA on Ray Tune, every trial in MLflow.

    python sweeps/run.py --space sweeps/strategies.yaml
    python sweeps/run.py --space sweeps/strategies.yaml --num-samples 8 --max-epochs 4
    python sweeps/run.py --space sweeps/strategies.yaml --resume          # after a killed driver
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python sweeps/run.py --space sweeps/strategies.yaml --tracking-uri http://MLFLOW:5000

Embedded defaults: a local Ray (dashboard on 127.0.0.1), synthetic ETH3D-format facade scenes and
the tiny pretrained VGGT base (both built once into a cache), the local MLflow server of
`tracking`. The sweep's storage folder `<storage-path>/<name>/` holds the Ray experiment, the
Optuna study (`optuna.db`), the MLflow parent run id and, at the end, `leaderboard.csv/.md`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python sweeps/run.py` from a checkout, without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import math
import os
import time
from dataclasses import replace

from lora_train.errors import ArgumentParser, UserError, cli_main
from sweeps.space import SweepSpace, load_space

PARENT_RUN_FILE = "mlflow_parent_run_id"
OPTUNA_DB = "optuna.db"
DEFAULT_STORAGE = "runs/sweeps"
LEADERBOARD_LIMIT = 50


def parse_args(argv):
    p = ArgumentParser(prog="python sweeps/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True, help="search-space YAML (e.g. sweeps/strategies.yaml)")
    p.add_argument("--data-root", help="ETH3D-format dataset folder (default: synthetic facades, cached)")
    p.add_argument("--checkpoint", help="VGGT-1B model.pt to fine-tune instead of the tiny base")
    p.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI or a local server)")
    p.add_argument("--experiment", help="MLflow experiment (default: the sweep name)")
    p.add_argument("--num-samples", type=int, help="trials in total")
    p.add_argument("--max-epochs", type=int, help="epochs of a trial ASHA never stops")
    p.add_argument("--max-concurrent", type=int, help="cap on concurrent trials (0: from resources)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (0: CPU workers)")
    p.add_argument("--workers-per-trial", type=int, help="DDP workers per trial")
    p.add_argument("--max-failures", type=int, help="retries of a failing trial")
    p.add_argument("--storage-path", help=f"where sweeps are stored (default: ./{DEFAULT_STORAGE}); "
                                          "shared storage (NFS, s3://) on a multi-node cluster")
    p.add_argument("--name", help="sweep name (default: the space's name)")
    p.add_argument("--resume", action="store_true", help="continue the sweep of this name")
    p.add_argument("--address", help="Ray cluster (e.g. auto, ray://head:10001; default: $RAY_ADDRESS or local)")
    return p.parse_args(argv)


def apply_cli(space: SweepSpace, args) -> SweepSpace:
    """CLI overrides of the space's budget and resources, validated like the file (flag named)."""
    checks = {
        "num_samples": (args.num_samples, 1), "max_epochs": (args.max_epochs, 1),
        "max_concurrent": (args.max_concurrent, 0), "workers_per_trial": (args.workers_per_trial, 1),
        "gpus_per_trial": (args.gpus_per_trial, 0), "max_failures": (args.max_failures, -1),
    }
    changes = {}
    for field, (value, minimum) in checks.items():
        if value is None:
            continue
        if value < minimum or (isinstance(value, float) and not math.isfinite(value)):
            raise UserError(f"--{field.replace('_', '-')}: must be >= {minimum}, got {value}")
        changes[field] = value
    if args.name is not None:
        import re

        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", args.name):
            raise UserError(f"--name: use letters, digits, '_', '.', '-', got {args.name!r}")
        changes["name"] = args.name
    space = replace(space, **changes)
    if space.launcher == "in_trial" and space.workers_per_trial != 1:
        raise UserError(f"--workers-per-trial: resources.launcher in_trial runs one process, got "
                        f"{space.workers_per_trial} workers (use launcher auto or ray_train)")
    if space.grace_period > space.max_epochs:
        raise UserError(f"--max-epochs: {space.max_epochs} is below asha.grace_period ({space.grace_period})")
    return space


def cli_overrides(args) -> dict:
    overrides = {}
    if args.data_root is not None:
        root = Path(args.data_root).expanduser().resolve()
        if not root.is_dir():
            raise UserError(f"--data-root: not a directory: {args.data_root}")
        overrides["data.root"] = str(root)
    if args.checkpoint is not None:
        ckpt = Path(args.checkpoint).expanduser().resolve()
        if not ckpt.is_file():
            raise UserError(f"--checkpoint: file not found: {args.checkpoint}")
        overrides.update({"model.preset": "vggt1b", "model.checkpoint": str(ckpt)})
    return overrides


def sweep_paths(space: SweepSpace, args) -> tuple[str, Path]:
    storage = args.storage_path or DEFAULT_STORAGE
    if "://" in storage:
        raise UserError(f"--storage-path: {storage}: give a local or network-mounted folder")
    storage_dir = Path(storage).expanduser().resolve()
    sweep_dir = storage_dir / space.name
    exists = (sweep_dir / PARENT_RUN_FILE).exists() or any(sweep_dir.glob("experiment_state*.json"))
    if args.resume and not exists:
        raise UserError(f"--resume: no sweep named {space.name!r} in {storage_dir}")
    if not args.resume and exists:
        raise UserError(f"--name: sweep {space.name!r} already exists in {storage_dir}; "
                        "pass --resume to continue it or choose another --name")
    return str(storage_dir), sweep_dir


def configure_environment() -> None:
    # Worker groups of DDP trials start slowly on small machines; Ray's default is 60 s.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Snapshot the experiment state at every controller step, so a killed driver loses (almost) no
    # started trial; the state of a LoRA sweep is small.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def init_ray(address: str | None):
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        return ray.init(address=address, log_to_driver=True)
    # Local: on loopback, with the dashboard (ray[default]): Train's placement-group cleaner
    # queries the State API. Its processes find the cluster through RAY_ADDRESS, so other Ray
    # instances on the same machine cannot confuse them; hence a GCS port chosen up front.
    from tracking.server import free_port

    gcs_port = free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(gcs_port)
    repo_root = str(Path(__file__).resolve().parents[1])
    env_vars = {
        "RAY_ADDRESS": f"127.0.0.1:{gcs_port}",
        "PYTHONPATH": os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH")) if p),
    }
    try:
        return ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
                        _node_ip_address="127.0.0.1", runtime_env={"env_vars": env_vars})
    finally:
        os.environ.pop("RAY_GCS_SERVER_PORT", None)


def max_concurrent(space: SweepSpace) -> int:
    """Trials at once: the cluster's GPUs (or CPUs) ÷ what one trial needs, capped by the budget."""
    import ray

    total = ray.cluster_resources()
    if space.gpus_per_trial > 0:
        available = int(total.get("GPU", 0) // space.gpus_per_trial)
        if available < 1:
            raise UserError(f"--gpus-per-trial: {space.gpus_per_trial} GPUs per trial, the Ray "
                            f"cluster has {total.get('GPU', 0):g}")
    else:
        available = int(total.get("CPU", 0) // space.cpus_per_trial)
        if available < 1:
            raise UserError(f"resources.cpus_per_trial: {space.cpus_per_trial} CPUs per trial, the "
                            f"Ray cluster has {total.get('CPU', 0):g}")
    if space.max_concurrent:
        available = min(available, space.max_concurrent)
    return max(1, min(available, space.num_samples))


def prepare_embedded_data(space: SweepSpace, overrides: dict) -> None:
    """Build the synthetic scenes and the tiny base once, before trials race for them."""
    from lora_train.base_model import ensure_synthetic_scenes, ensure_tiny_base
    from lora_train.config import load_config

    base = str(space.base_config_path) if space.base_config_path else None
    config = load_config(base, {**space.base_overrides, **overrides})
    if config.data.root is None:
        print("preparing synthetic ETH3D-format scenes (cached)...", flush=True)
        ensure_synthetic_scenes(config.data.synthetic_family, config.data.synthetic_scenes,
                                seed=config.data.synthetic_seed)
    if config.model.checkpoint == "tiny-base":
        print("preparing the tiny pretrained base (cached)...", flush=True)
        ensure_tiny_base()


def build_searcher(space: SweepSpace, sweep_dir: Path, concurrency: int):
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from sweeps.search import PruningAwareOptunaSearch

    s = space.sampler
    if s["type"] == "random":
        sampler = optuna.samplers.RandomSampler(seed=s["seed"])
    else:
        sampler = optuna.samplers.TPESampler(
            seed=s["seed"], multivariate=s["multivariate"], group=s["group"],
            n_startup_trials=s["n_startup_trials"], constant_liar=True,
        )
    storage = optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / OPTUNA_DB}")
    searcher = PruningAwareOptunaSearch(
        space=space.define_by_run(), metric=space.metric, mode=space.mode, sampler=sampler,
        storage=storage, study_name=space.name, points_to_evaluate=space.points_to_evaluate or None,
        max_epochs=space.max_epochs,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=concurrency)


def build_tuner(space, setup, sweep_dir: Path, storage_path: str, tracker, resume: bool, concurrency: int):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from sweeps.callbacks import MlflowTrialCallback, ProgressCallback
    from sweeps.trial import train_driver

    if space.runs_in_trial():  # the trial trains itself: it holds the trial's CPUs/GPUs
        resources = {"CPU": space.cpus_per_trial, "GPU": space.gpus_per_trial}
    else:  # it only drives a Train run whose workers hold them; Ray needs a non-empty request
        resources = {"CPU": 0, "memory": 2**20}
    trainable = tune.with_resources(tune.with_parameters(train_driver, setup=setup), resources)
    callbacks = [MlflowTrialCallback(setup, tracker), ProgressCallback(space.metric, space.mode, space.max_epochs)]
    run_config = tune.RunConfig(
        name=space.name, storage_path=storage_path, verbose=0, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=space.max_failures),
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute=space.metric,
            checkpoint_score_order=space.mode,
        ),
    )
    if resume:
        return tune.Tuner.restore(str(sweep_dir), trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(space, sweep_dir, concurrency),
            scheduler=ASHAScheduler(
                time_attr="training_iteration", metric=space.metric, mode=space.mode,
                max_t=space.max_epochs, grace_period=space.grace_period,
                reduction_factor=space.reduction_factor, brackets=space.brackets,
            ),
            num_samples=space.num_samples, reuse_actors=True,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=run_config,
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run_sweep(args, train_fn=None) -> dict:
    """Validate everything, then run (or resume) the sweep. Returns a summary dict."""
    configure_environment()
    space = apply_cli(load_space(args.space), args)
    overrides = cli_overrides(args)
    storage_path, sweep_dir = sweep_paths(space, args)
    experiment = args.experiment or space.name

    from tracking.runs import SweepTracker
    from tracking.server import resolve_tracking_uri

    import ray

    from sweeps.trial import TrialSetup

    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    init_ray(args.address)
    started = time.time()
    try:
        concurrency = max_concurrent(space)
        if train_fn is None:
            prepare_embedded_data(space, overrides)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        tracker = SweepTracker(tracking_uri, experiment)
        parent_file = sweep_dir / PARENT_RUN_FILE
        stored = parent_file.read_text().strip() if parent_file.exists() else None
        parent_run_id = tracker.open_parent(space.name, space.summary(), space.source_text, run_id=stored)
        if stored is None:
            _write_atomic(parent_file, parent_run_id)
        setup = TrialSetup(
            space=space, cli_overrides=overrides, tracking_uri=tracking_uri, experiment=experiment,
            parent_run_id=parent_run_id, sweep_dir=str(sweep_dir), train_fn=train_fn,
        )
        print(f"sweep {space.name}: {space.num_samples} trials, up to {space.max_epochs} epochs, "
              f"{concurrency} at once; storage {sweep_dir}; MLflow {tracking_uri} "
              f"(experiment {experiment}, parent run {parent_run_id})", flush=True)
        tuner = build_tuner(space, setup, sweep_dir, storage_path, tracker, args.resume, concurrency)
        results = tuner.fit()
        summary = finish(space, setup, tracker, results, sweep_dir)
    finally:
        if not (args.address or os.environ.get("RAY_ADDRESS")):
            ray.shutdown()
    summary["wall_s"] = time.time() - started
    summary["tracking_uri"] = tracking_uri
    print(f"sweep {space.name} finished in {summary['wall_s']:.0f} s", flush=True)
    return summary


def finish(space: SweepSpace, setup, tracker, results, sweep_dir: Path) -> dict:
    """Leaderboard (printed, written, logged), best run on the parent, champion registered."""
    from tracking.compare import compare, format_leaderboard

    from sweeps.serving import register_champion

    abandoned = close_abandoned_runs(tracker, results)
    replay_trial_spools(tracker, sweep_dir)
    rows, files = compare(tracker, sweep_dir, log_to_parent=True)
    print(format_leaderboard(rows), flush=True)
    csv_path, md_path = files[0], files[1]

    best = None
    try:
        best = results.get_best_result(metric=space.metric, mode=space.mode, scope="all",
                                       filter_nan_and_inf=True)
    except RuntimeError:
        pass
    summary = {"trials": len(results), "errors": len(results.errors), "leaderboard": [str(csv_path), str(md_path)],
               "rows": [{k: v for k, v in row.items() if k != "curve"} for row in rows]}
    best_run_id = None
    if best is not None and best.metrics and space.metric in best.metrics:
        trial_id = best.metrics["trial_id"]
        df = best.metrics_dataframe
        if df is not None and space.metric in df:
            best_value = float(df[space.metric].min() if space.mode == "min" else df[space.metric].max())
        else:  # the result files may lag behind; the reported result has the value too
            best_value = float(best.metrics[space.metric])
        best_run_id = next((r["run_id"] for r in rows if r["trial_id"] == trial_id), None)
        summary.update({"best_trial": trial_id, "best_value": best_value, "best_run_id": best_run_id})
        checkpoint = best.get_best_checkpoint(space.metric, space.mode) or best.checkpoint
        if checkpoint is not None and best_run_id is not None:
            with checkpoint.as_directory() as adapter_dir:
                version = register_champion(tracker, best_run_id, setup.experiment, adapter_dir)
            summary["champion_version"] = version
        base = _base_metric(sweep_dir, trial_id)
        if base is not None:
            summary["base_value"] = base
            print(f"best trial {trial_id}: {space.metric} {best_value:.4f} vs frozen base {base:.4f}", flush=True)
        else:
            print(f"best trial {trial_id}: {space.metric} {best_value:.4f}", flush=True)
    best_metrics = {}
    if best_run_id is not None:
        best_metrics = {f"best/{space.metric.replace('/', '_')}": summary["best_value"]}
        if "base_value" in summary:
            best_metrics[f"base/{space.metric.replace('/', '_')}"] = summary["base_value"]
    tracker.finish_parent(best_run_id, best_metrics, [str(csv_path), str(md_path)])
    summary["abandoned_optuna_trials"] = fail_abandoned_optuna_trials(space, sweep_dir)
    summary["abandoned_runs"] = abandoned
    _write_atomic(sweep_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def replay_trial_spools(tracker, sweep_dir: Path, timeout: float = 300.0) -> None:
    """Send what trials spooled while the MLflow server was down and could not send before they
    ended (a trial's logger replays only while the trial runs)."""
    from tracking.logger import MetricLogger

    from sweeps.trial import SPOOL_FILE

    for run in tracker.trial_runs():
        spool = sweep_dir / "trials" / str(run.data.tags.get("ray.trial_id")) / SPOOL_FILE
        if not spool.is_file() or spool.stat().st_size == 0:
            continue
        logger = MetricLogger(tracker.tracking_uri, run.info.run_id, spool)
        sent = logger.flush(timeout)
        logger.close()
        print(f"replayed the MLflow spool of trial {run.data.tags.get('ray.trial_id')}"
              + ("" if sent else f" (incomplete: records remain in {spool})"), flush=True)


def close_abandoned_runs(tracker, results) -> int:
    """Remove child runs still RUNNING whose trial the (restored) experiment does not know: the
    driver was killed within a moment of starting them, before Tune recorded them, and Tune ran a
    new trial in their place. They are tagged, closed and then soft-deleted (restorable with
    `mlflow.MlflowClient().restore_run`), so the experiment holds exactly one run per trial."""
    known = {Path(result.path).name for result in results if result.path}
    abandoned = 0
    for run in tracker.trial_runs():
        if run.info.status == "RUNNING" and run.data.tags.get("ray.trial_id") not in known:
            tracker.close_trial(run.info.run_id, "failed",
                                "abandoned: the sweep driver was killed before the trial was recorded")
            tracker.client.delete_run(run.info.run_id)
            abandoned += 1
    return abandoned


def fail_abandoned_optuna_trials(space: SweepSpace, sweep_dir: Path) -> int:
    """Optuna trials still RUNNING after the sweep were proposed by a driver that was killed
    before Ray recorded them (they never ran); tell Optuna they failed so TPE ignores them."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=space.name, storage=f"sqlite:///{sweep_dir / OPTUNA_DB}")
    abandoned = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for trial in abandoned:
        study.tell(trial.number, state=TrialState.FAIL)
    return len(abandoned)


def _base_metric(sweep_dir: Path, trial_id: str) -> float | None:
    """The frozen base's val AbsRel from a completed trial's base-vs-adapter evaluation."""
    for path in sorted((sweep_dir / "trials").glob("*/eval/metrics.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        base = (data.get("results") or data).get("base") if isinstance(data, dict) else None
        if isinstance(base, dict) and "abs_rel" in base:
            return float(base["abs_rel"])
    return None


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    summary = run_sweep(args)
    return 0 if summary.get("best_trial") else 1  # 1: no trial produced a result


if __name__ == "__main__":
    sys.exit(main())
