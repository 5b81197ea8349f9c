"""The end of a sweep: the leaderboard, the best trial, the champion; or, after an interrupt, a
resumable state with nothing decided."""

from __future__ import annotations

import json
from pathlib import Path

from sweeps.space import SweepSpace
from sweeps.study_storage import study_url
from vggt_common.files import atomic_write


def finish(space: SweepSpace, setup, tracker, results, sweep_dir: Path, champion_base: str = "auto",
           interrupt_grace: float = 60.0) -> dict:
    """The confirm phase (`sweeps.confirm`), leaderboard (printed, written, logged), best run on the
    parent, the champion decision (`decide_champion`) and, when promoted, its registration.

    Raises:
        SweepInterrupted: Ctrl-C / SIGTERM during the confirm phase: its unfinished runs and the
            parent end KILLED (`close_interrupted`), nothing is decided.
    """
    from sweeps import pareto_report
    from sweeps.confirm import run_confirm_phase
    from sweeps.interrupts import SweepInterrupted
    from tracking.compare import compare, format_leaderboard
    from tracking.report import write_report

    abandoned = close_abandoned_runs(tracker, results)
    replay_trial_spools(tracker, sweep_dir)
    try:
        outcome = run_confirm_phase(space, setup, tracker, results, sweep_dir, interrupt_grace)
    except SweepInterrupted as err:
        closed = close_interrupted(tracker, setup)
        raise SweepInterrupted(f"{err}: {closed} run(s) unfinished, nothing registered") from None
    if outcome.confirmed:
        replay_trial_spools(tracker, sweep_dir)  # the confirm runs'
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
    summary.update(decide_champion(space, tracker, setup.experiment, outcome, sweep_dir, champion_base))
    summary.update({"confirm_runs": sum(map(len, outcome.runs.values())) if outcome.confirmed else 0,
                    "confirm_wall_s": outcome.wall_s})
    summary.update(pareto_report.report(space, tracker, sweep_dir))  # front tags, hypervolume, importance
    tracker.finish_parent(best_run_id, best_metrics, [str(csv_path), str(md_path)])
    summary["abandoned_optuna_trials"] = fail_abandoned_optuna_trials(space, sweep_dir)
    summary["abandoned_runs"] = abandoned
    summary["report"] = str(write_report(tracker, rows, sweep_dir, space.metric))  # also on the parent run
    atomic_write(sweep_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def decide_champion(space: SweepSpace, tracker, model_name: str, outcome, sweep_dir: Path,
                    champion_base: str = "auto") -> dict:
    """Choose the candidate, decide on it (`sweeps.selection.promotion_decision`), register it if
    promoted; the decision goes on the parent (`champion.*` tags) and the console as one line.

    The candidate is the configuration with the best mean over its confirm runs (`outcome`); the
    adapter registered is its run closest to that mean. An existing champion (`<model_name>@champion`)
    is evaluated on the candidate's windows (each fold's, with folds) and compared by the same
    paired test; if it cannot be, it stays. A champion that is the chosen run itself (registered by
    an earlier finish of this sweep) is not compared with itself: the decision is made again alone.

    Returns:
        `{"champion_decision": {tag: value}, "champion_version": int}` (the version when promoted).
    """
    import dataclasses
    import math

    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    from sweeps import console
    from sweeps.champion import register_champion
    from sweeps.selection import PromotionDecision, choose_candidate, mean_difference, pool_seeds, promotion_decision
    from tracking.layout import CHAMPION_ALIAS

    chosen = None
    if not any(outcome.runs.values()):
        nan = math.nan
        decision = PromotionDecision("rejected", nan, nan, nan, 0, 0, 0.95,
                                     f"nothing to decide on, no evaluated run: {outcome.basis}")
    else:
        candidate = choose_candidate({c: [r.scores() for r in runs] for c, runs in outcome.runs.items()})
        runs = outcome.runs[candidate.config]
        chosen = min(runs, key=lambda r: abs(mean_difference(r.scores()) - candidate.mean_delta))
        try:
            current = tracker.client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
        except MlflowException:  # no champion yet
            current = None
        champion, failure = None, ""
        if current is not None and current.run_id != chosen.run_id:
            try:
                champion = champion_scores(tracker, current, runs, sweep_dir)
            except Exception as err:  # the decision is made without it, and the champion stays
                failure = " ".join(str(err).split())[:300]
        retained = [r.retention() for r in runs]
        decision = promotion_decision(
            candidate.adapter, candidate.base, champion, num_compared=outcome.num_compared,
            retention=pool_seeds(retained) if all(retained) else None,
            retention_margin=space.selection["retention_margin"])
        if decision.decision == "promoted" and current is not None and champion is None:
            note = f"it is the champion already (version {current.version})"
            if failure:
                note = f"the champion (version {current.version}) could not be evaluated on these windows ({failure})"
            decision = dataclasses.replace(decision, decision="kept" if failure else "promoted",
                                           reason=decision.reason.replace("first champion", note))
        decision = dataclasses.replace(decision, reason=f"{decision.reason}; candidate {candidate.config}, "
                                                        f"{outcome.basis}")
    tags = {**decision.tags(), **({"champion.run_id": chosen.run_id} if chosen else {})}
    tracker.client.log_batch(tracker.require_parent(), tags=[RunTag(k, v) for k, v in tags.items()])
    console.active().line(f"champion: {decision.decision}: {decision.reason}")
    summary = {"champion_decision": tags}
    if decision.decision == "promoted":
        version = register_champion(tracker, chosen.run_id, model_name, chosen.report["adapter"], champion_base)
        for key, value in decision.tags().items():
            tracker.client.set_model_version_tag(model_name, str(version), key, value)
        tracker.client.set_tag(tracker.require_parent(), "champion.version", str(version))
        console.active().line(f"  registered {model_name} version {version} as @{CHAMPION_ALIAS}")
        summary["champion_version"] = version
    return summary


def champion_scores(tracker, version, runs, sweep_dir: Path):
    """The registered champion `version`'s per-window AbsRel (`WindowScores`) on the windows of
    `runs` (`EvaluatedRun`s): each distinct window set (a fold) evaluated with its run's config, so
    with the same data, protocol and base.

    Raises:
        ValueError: the champion was scored on other windows (e.g. another dataset); anything the
            download or the evaluation raises.
    """
    import mlflow
    import yaml

    from lora_train.checkpointing import load_run_config
    from lora_train.config import apply_overrides
    from lora_train.evaluate import evaluate_checkpoint
    from sweeps.selection import WindowScores

    out_dir = sweep_dir / "champion_eval" / f"v{version.version}"
    def download(path: str) -> str:  # a file or folder of the registered model (not the whole model)
        model_uri = tracker.client.get_model_version_download_uri(version.name, version.version)
        return mlflow.artifacts.download_artifacts(artifact_uri=f"{model_uri}/{path}",
                                                   tracking_uri=tracker.tracking_uri, dst_path=str(out_dir))

    pyfunc = yaml.safe_load(Path(download("MLmodel")).read_text())["flavors"]["python_function"]
    adapter = download(pyfunc["artifacts"]["adapter"]["path"])  # see sweeps.champion.register_champion
    records = []
    for windows_hash, run in {r.report["windows_hash"]: r for r in runs}.items():
        config = apply_overrides(load_run_config(run.report["adapter"]),  # the run's data and protocol
                                 {"eval.retention_root": None, "eval.retention_synthetic": None})
        report = evaluate_checkpoint(config, adapter, out_dir=out_dir / windows_hash, num_vis=0)
        if report["windows_hash"] != windows_hash:
            raise ValueError(f"it was scored on windows {report['windows_hash']}, not {windows_hash}")
        records += report["per_window"]["adapter"]
    return WindowScores.from_records(records)


def replay_trial_spools(tracker, sweep_dir: Path, timeout: float = 300.0) -> None:
    """Send what trials spooled while the MLflow server was down and could not send before they
    ended (a trial's logger replays only while the trial runs)."""
    from sweeps.trial_setup import SPOOL_FILE
    from tracking.logger import MetricLogger

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

    study = optuna.load_study(study_name=space.name, storage=study_url(space, sweep_dir))
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


def close_interrupted(tracker, setup) -> int:
    """After an interrupt: every trial run still RUNNING and the parent end KILLED, tagged
    `interrupted`; their trials get the stop marker (a training thread still alive stops at its
    next step). Optuna is not told anything: its trials stay RUNNING and resume with Tune's."""
    from sweeps.trial_setup import mark_stopped

    closed = 0
    for run in tracker.trial_runs():
        if run.info.status == "RUNNING":
            mark_stopped(setup, run.data.tags.get("ray.trial_id", ""))
            tracker.close_trial(run.info.run_id, "interrupted", "the sweep was interrupted; --resume continues it")
            closed += 1
    tracker.interrupt_parent()
    return closed
