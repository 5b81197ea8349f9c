"""Search quality: multi-objective ASHA, ASHA's saving and warm start, side by side in one run.

Real training on a 2-core CPU is too slow for dozens of sweeps of 27-81 trials, so the sweeps are
replayed on a table of REAL learning curves:

1. MEASURED. Every configuration of a grid (strategy A|B|C x rank 2|4|8|16 x lr 1e-4|3e-4|1e-3|3e-3,
   the tiny pretrained base on the synthetic facades of `sweeps/strategies.yaml`, 9 epochs of 6
   steps, training seed 42) is trained once with `lora_train.train.run_training`; its val AbsRel
   after each epoch, its seconds per epoch and its adapter's trainable parameter count are cached
   under `$VGGT_LORA_CACHE/bench_search_quality/` and printed.
2. REPLAYED. Each sweep runs the sweep's own searcher (`sweeps.tuning.build_searcher`: Optuna TPE
   or random, multi-objective TPE for two objectives, the pruning-aware Ray `OptunaSearch`
   subclass, warm start) and scheduler (`sweeps.schedulers.MultiObjectiveASHA`, max_t 9, eta 3),
   driven as Tune drives them, by an event simulation of 4 concurrent workers whose epochs take the
   measured seconds; a trial's result at epoch e is the measured curve's. No Ray, no MLflow. A
   configuration proposed twice gets the same curve (the table holds one training seed), so
   training noise between repeats is not modelled.
3. Optionally (`--real-trials N`), one real multi-objective sweep (`sweeps/run.py`, real
   training, Ray, MLflow) of N trials on the same grid, MEASURED, as a check of the whole path.

Hypervolume of (val AbsRel min, trainable params min, log scale): over each sweep's finished
trials at their last result (as `sweeps/pareto_report.py` computes it), in ONE box for every
method and seed: `sweeps.pareto.hypervolume_box` over every measured value (all configurations,
all epochs): ideal = the best value of each objective, reference = the worst moved out by 10 %.

    python benchmarks/bench_search_quality.py [--seeds 5] [--real-trials 0] [--tracking-uri URI]
"""

import argparse
import contextlib
import hashlib
import heapq
import io
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
import yaml  # noqa: E402

from lora_train.data.cache import cache_root  # noqa: E402
from sweeps.pareto import Objective, hypervolume_2d, hypervolume_box  # noqa: E402
from sweeps.warm_start import EarlierTrial, WarmStart  # noqa: E402
from vggt_common.files import atomic_write  # noqa: E402

STRATEGIES = ("A", "B", "C")
RANKS = (2, 4, 8, 16)
LRS = (1e-4, 3e-4, 1e-3, 3e-3)
MAX_T, ETA, CONCURRENCY = 9, 3, 4
TRAIN_SEED = 42
BASE_OVERRIDES = {
    "model.preset": "tiny", "model.checkpoint": "tiny-base", "model.overrides.enable_point": False,
    "data.synthetic_family": "facade", "data.synthetic_scenes": 6, "train.steps_per_epoch": 6,
    "train.progress_bar": False, "train.seed": TRAIN_SEED,
}
ABS_REL, PARAMS = "val/abs_rel", "adapter/trainable_params"
OBJECTIVES = (Objective(ABS_REL), Objective(PARAMS, scale="log"))


# ---- 1. the measured curves ------------------------------------------------------------------

def grid_key(strategy, rank, lr) -> str:
    return f"{strategy}|{int(rank)}|{float(lr):g}"


def measure_curves(threads: int) -> dict:
    """`{grid_key: {"abs_rel": [9], "epoch_s": [9], "trainable_params": n}}`, trained once and cached
    (resumable: each configuration is saved as soon as it is measured)."""
    import torch

    from lora_train.config import load_config
    from lora_train.reporting import Reporter
    from lora_train.train import run_training
    from sweeps.trial_reporter import adapter_param_count

    settings = {"grid": [STRATEGIES, RANKS, LRS], "max_t": MAX_T, "base": BASE_OVERRIDES, "version": 1}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_root() / "bench_search_quality" / f"curves-{digest}.json"
    curves = json.loads(path.read_text()) if path.is_file() else {}

    class Curve(Reporter):
        def __init__(self):
            self.abs_rel, self.epoch_s, self.params, self.last = [], [], None, time.time()

        def on_epoch(self, epoch, metrics, checkpoint_dir):
            now = time.time()
            self.abs_rel.append(float(metrics["val/abs_rel"]))
            self.epoch_s.append(now - self.last)
            self.last = now
            if self.params is None and checkpoint_dir:
                self.params = adapter_param_count(checkpoint_dir)

    torch.set_num_threads(threads)
    todo = [(s, r, lr) for s in STRATEGIES for r in RANKS for lr in LRS if grid_key(s, r, lr) not in curves]
    with tempfile.TemporaryDirectory(prefix="bench-sq-") as out:
        for i, (strategy, rank, lr) in enumerate(todo):
            print(f"measuring {grid_key(strategy, rank, lr)} ({i + 1} of {len(todo)}, real training)", flush=True)
            config = load_config(None, {**BASE_OVERRIDES, "lora.strategy": strategy, "lora.rank": rank, "optim.lr": lr,
                                        "train.epochs": MAX_T, "train.output_dir": out, "train.overwrite": True,
                                        "train.keep_checkpoints": 1})
            curve = Curve()
            run_training(config, curve)
            curves[grid_key(strategy, rank, lr)] = {"abs_rel": curve.abs_rel, "epoch_s": curve.epoch_s,
                                                    "trainable_params": curve.params}
            atomic_write(path, json.dumps(curves, indent=1))
    return curves


# ---- 2. replayed sweeps ------------------------------------------------------------------------

def space_file(work: Path, name: str, *, seed: int, sampler: str, objectives, num_samples: int, asha: bool) -> Path:
    """The grid as a space file (`selection.top_k: 0`: the search alone, no confirm phase)."""
    raw = {
        "name": name,
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in objectives],
        "budget": {"num_samples": num_samples, "max_epochs": MAX_T},
        "asha": {"grace_period": 1 if asha else MAX_T, "reduction_factor": ETA},
        "sampler": {"type": sampler, "seed": seed, "n_startup_trials": 5, **({} if sampler == "tpe" else
                                                                             {"multivariate": False, "group": False})},
        "base_config": {"overrides": BASE_OVERRIDES},
        "strategies": {s: {} for s in STRATEGIES},
        "parameters": {"lora.rank": {"choices": list(RANKS)}, "optim.lr": {"choices": list(LRS)}},
        "selection": {"top_k": 0},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class ReplayWarmStart(WarmStart):
    """A warm start whose reused proposals are recorded in memory (the sweep writes files)."""

    def __init__(self, trials):
        super().__init__(trials)
        self.reused: set[str] = set()

    def reuse(self, trial_id, earlier, max_epochs):
        self.reused.add(trial_id)


def replay_sweep(curves: dict, work: Path, name: str, *, seed: int, sampler: str = "tpe", objectives=OBJECTIVES,
                 num_samples: int = 27, asha: bool = True, warm: ReplayWarmStart | None = None) -> dict:
    """One sweep on the measured curves (module doc). Returns its `events`: one per reported epoch
    `(epochs trained so far, trial index, result, finished)`, its `trials` (index → grid key,
    reused?) and the `epochs` it trained."""
    from sweeps.space_file import load_space
    from sweeps.tuning import build_searcher

    space = load_space(space_file(work, name, seed=seed, sampler=sampler, objectives=objectives,
                                  num_samples=num_samples, asha=asha), validate_config=False)
    (work / name).mkdir()
    with contextlib.redirect_stdout(io.StringIO()):  # the searcher's "reused" lines
        return _replay(curves, space, build_searcher(space, work / name, CONCURRENCY, warm_start=warm), name,
                       num_samples, warm)


def _replay(curves, space, searcher, name, num_samples, warm) -> dict:
    """The event loop: 4 workers; Tune's calls to scheduler and searcher in Tune's order."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from sweeps.schedulers import MultiObjectiveASHA

    scheduler = MultiObjectiveASHA(space.criteria, max_t=MAX_T, grace_period=space.grace_period,
                                   reduction_factor=ETA)
    clock, trained, started, queue, events, trials = 0.0, 0, 0, [], [], {}
    running = 0
    while started < num_samples or queue:
        while running < CONCURRENCY and started < num_samples:
            trial_id = f"{name}-{started:03d}"
            config = searcher.suggest(trial_id)
            if config is None:
                break
            key = grid_key(config["lora"]["strategy"], config["lora"]["rank"], config["optim"]["lr"])
            reused = warm is not None and trial_id in warm.reused
            trials[started] = {"key": key, "reused": reused, "trial": Trial("bench", trial_id=trial_id, stub=True)}
            scheduler.on_trial_add(None, trials[started]["trial"])
            heapq.heappush(queue, (clock + (0 if reused else curves[key]["epoch_s"][0]), started, 1))
            started += 1
            running += 1
        clock, index, epoch = heapq.heappop(queue)
        info = trials[index]
        curve = curves[info["key"]]
        trained += not info["reused"]
        result = {"training_iteration": epoch, ABS_REL: curve["abs_rel"][epoch - 1],
                  PARAMS: float(curve["trainable_params"])}
        trial = info["trial"]
        decision = scheduler.on_trial_result(None, trial, dict(result))
        done = decision == TrialScheduler.STOP or epoch == MAX_T
        events.append((trained, index, result, done))
        if done:
            scheduler.on_trial_complete(None, trial, dict(result))
            searcher.on_trial_complete(trial.trial_id, dict(result))
            running -= 1
        else:
            searcher.on_trial_result(trial.trial_id, dict(result))
            heapq.heappush(queue, (clock + (0 if info["reused"] else curve["epoch_s"][epoch]), index, epoch + 1))
    return {"events": events, "trials": trials, "epochs": trained}


def hypervolume_curve(sweep: dict, box) -> list[tuple[int, float]]:
    """`[(epochs trained, hypervolume of the finished trials' last results)]` after each finish."""
    reference, ideal = box
    finished, curve = [], []
    for trained, _, result, done in sweep["events"]:
        if done:
            finished.append([result[ABS_REL], result[PARAMS]])
            curve.append((trained, hypervolume_2d(finished, OBJECTIVES, reference=reference, ideal=ideal)))
    return curve


def value_at(curve, epochs: int) -> float:
    """The last value of a step curve `[(epochs, value)]` at or before `epochs` (0 before the first)."""
    return max((v for e, v in curve if e <= epochs), default=0.0)


def first_epochs(curve, target: float):
    return next((e for e, v in curve if v >= target - 1e-12), None)


def best_curve(sweep: dict) -> list[tuple[int, int, float]]:
    """`[(epochs trained, trials started, best val AbsRel so far)]` after each reported epoch."""
    best, out = float("inf"), []
    for trained, index, result, _ in sweep["events"]:
        best = min(best, result[ABS_REL])
        out.append((trained, index + 1, best))
    return out


def reach(curve, target):
    """(epochs, trials started) when the best AbsRel first gets within `target`; None if never."""
    return next(((e, n) for e, n, b in curve if b <= target), None)


def warm_trials(sweep: dict) -> list[EarlierTrial]:
    """The finished (max_t) trials of a replayed sweep, as a later sweep's warm start reads them."""
    out = []
    for _, index, result, done in sweep["events"]:
        if done and result["training_iteration"] == MAX_T:
            strategy, rank, lr = sweep["trials"][index]["key"].split("|")
            params = {"lora/strategy": strategy, "lora/rank": int(rank), "optim/lr": float(lr)}
            out.append(EarlierTrial(f"earlier-{index}", "earlier", params, {k: result[k] for k in (ABS_REL, PARAMS)}))
    return out


def run_seed(curves, box, seed: int, work: Path) -> dict:
    full_budget = 27 * MAX_T
    out = {}
    random_full = replay_sweep(curves, work, f"random-full-{seed}", seed=seed, sampler="random", asha=False)
    hv_random = hypervolume_curve(random_full, box)[-1][1]
    out["hv_random_full"] = hv_random
    for label, objectives in (("mo_asha", OBJECTIVES), ("so_asha", OBJECTIVES[:1])):
        sweep = replay_sweep(curves, work, f"{label.replace('_', '-')}-{seed}", seed=seed, objectives=objectives,
                             num_samples=81)
        curve = hypervolume_curve(sweep, box)
        out[f"hv_{label}_third"] = value_at(curve, full_budget // 3)
        out[f"hv_{label}_full"] = value_at(curve, full_budget)
        reached = first_epochs(curve, hv_random)
        out[f"epochs_{label}_to_random_hv"] = reached
    out["hv_random_third"] = value_at(hypervolume_curve(random_full, box), full_budget // 3)

    # ASHA's saving: the same random proposals, with and without early stopping.
    asha = replay_sweep(curves, work, f"random-asha-{seed}", seed=seed, sampler="random", objectives=OBJECTIVES[:1])
    full_best = best_curve(random_full)[-1][2]
    out.update({"full_best": full_best, "asha_best": best_curve(asha)[-1][2], "asha_epochs": asha["epochs"]})
    for tolerance in (2, 0.5):
        hit = reach(best_curve(asha), (1 + tolerance / 100) * full_best)
        out[f"asha_epochs_to_full_best_{tolerance}"] = hit[0] if hit else None
        out[f"full_epochs_to_own_best_{tolerance}"] = reach(best_curve(random_full), (1 + tolerance / 100) * full_best)[0]

    # Warm start: a cold sweep; an earlier sweep (other seed); this seed warm-started from it.
    cold = replay_sweep(curves, work, f"cold-{seed}", seed=seed, objectives=OBJECTIVES[:1])
    earlier = replay_sweep(curves, work, f"earlier-{seed}", seed=seed + 1000, objectives=OBJECTIVES[:1])
    warm = ReplayWarmStart(warm_trials(earlier))
    warmed = replay_sweep(curves, work, f"warm-{seed}", seed=seed, objectives=OBJECTIVES[:1], warm=warm)
    cold_best = best_curve(cold)[-1][2]
    out.update({"cold_best": cold_best, "warm_best": best_curve(warmed)[-1][2],
                "warm_start_trials": len(warm.trials), "warm_reused": len(warm.reused)})
    for tolerance in (2, 0.5):
        target = (1 + tolerance / 100) * cold_best
        (cold_epochs, cold_trials), hit = reach(best_curve(cold), target), reach(best_curve(warmed), target)
        out.update({f"cold_trials_{tolerance}": cold_trials, f"cold_epochs_{tolerance}": cold_epochs,
                    f"warm_trials_{tolerance}": hit[1] if hit else None, f"warm_epochs_{tolerance}": hit[0] if hit else None})
    return out


# ---- 3. one real sweep -------------------------------------------------------------------------

def real_sweep(work: Path, trials: int, tracking_uri: str | None, box) -> dict:
    """A real multi-objective ASHA sweep on the grid (`sweeps/run.py` path); its hypervolume in the box."""
    from sweeps.driver import run_sweep
    from sweeps.run import parse_args
    from tracking.runs import SweepTracker

    name = f"bench-sq-real-{work.name[-6:]}"
    path = space_file(work, name, seed=0, sampler="tpe", objectives=OBJECTIVES, num_samples=trials, asha=True)
    flags = ["--space", str(path), "--storage-path", str(work / "store"), "--max-concurrent", "1"]
    if tracking_uri:
        flags += ["--tracking-uri", tracking_uri]
    summary = run_sweep(parse_args(flags))
    tracker = SweepTracker(summary["tracking_uri"], name, create=False)
    points, epochs = [], 0
    for run in tracker.trial_runs():
        if run.data.tags.get("sweep.phase", "search") != "search":
            continue
        epochs += len(tracker.metric_history(run.info.run_id, ABS_REL))
        if run.data.tags.get("trial.status") in ("completed", "early_stopped"):
            points.append([run.data.metrics[ABS_REL], run.data.metrics[PARAMS]])
    reference, ideal = box
    return {"trials": len(points), "epochs": epochs, "wall_s": summary["wall_s"],
            "hypervolume": hypervolume_2d(points, OBJECTIVES, reference=reference, ideal=ideal),
            "best": min(p[0] for p in points), "front": summary.get("pareto_front")}


# ---- output ------------------------------------------------------------------------------------

def mean_sd(values, fmt="{:.3f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "never"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(sd)}"


def count_reached(values) -> str:
    return f"{sum(v is not None for v in values)}/{len(values)}"


def print_curves(curves: dict) -> None:
    print("\nMEASURED learning curves (real training, one seed each): val AbsRel after epoch 1 / 3 / 9")
    print(f"{'strategy':>8} {'rank':>5} {'lr':>8} {'trainable':>10} {'ep1':>7} {'ep3':>7} {'ep9':>7} {'s/epoch':>8}")
    for key, c in curves.items():
        strategy, rank, lr = key.split("|")
        a = c["abs_rel"]
        print(f"{strategy:>8} {rank:>5} {lr:>8} {c['trainable_params']:>10} {a[0]:>7.4f} {a[2]:>7.4f} {a[8]:>7.4f} "
              f"{statistics.mean(c['epoch_s']):>8.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5, help="sampler seeds per replayed comparison (>= 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads while measuring the curves")
    p.add_argument("--real-trials", type=int, default=0, help="also run one real MO-ASHA sweep of N trials")
    p.add_argument("--tracking-uri", default=None, help="MLflow server of the real sweep")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message=".*experimental feature.*")
    curves = measure_curves(args.threads)
    print_curves(curves)
    measured = [[v, c["trainable_params"]] for c in curves.values() for v in c["abs_rel"]]
    box = hypervolume_box(OBJECTIVES, measured)
    finals = [[c["abs_rel"][-1], c["trainable_params"]] for c in curves.values()]
    grid_hv = hypervolume_2d(finals, OBJECTIVES, reference=box[0], ideal=box[1])
    print(f"\nhypervolume box: ideal (AbsRel {box[1][0]:.4f}, params {box[1][1]:.0f}), reference (AbsRel "
          f"{box[0][0]:.4f}, params {box[0][1]:.0f}, log scale); every grid configuration at epoch 9: {grid_hv:.3f}")

    work = Path(tempfile.mkdtemp(prefix="bench-sq-"))
    rows = []
    for seed in range(args.seeds):
        started = time.time()
        rows.append(run_seed(curves, box, seed, work))
        print(f"seed {seed} replayed in {time.time() - started:.0f} s", flush=True)
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    full = 27 * MAX_T
    print(f"\nREPLAYED sweeps (measured curves; {args.seeds} sampler seeds, mean ± sd; 4 workers; max_t {MAX_T}, "
          f"eta {ETA})")
    print(f"A. Hypervolume of (val AbsRel, trainable params); full budget = random search, 27 trials x {MAX_T} "
          f"epochs = {full} epochs")
    print(f"{'':34}{'HV at ' + str(full // 3) + ' epochs':>18}{'HV at ' + str(full) + ' epochs':>18}"
          f"{'epochs to reach random-full HV (share of ' + str(full) + '; seeds)':>54}")
    print(f"{'random search, no early stopping':34}{mean_sd(col('hv_random_third')):>18}"
          f"{mean_sd(col('hv_random_full')):>18}{full:>54}")
    for label, title in (("mo_asha", "multi-objective ASHA + MOTPE"), ("so_asha", "single-objective ASHA + TPE")):
        reached = col(f"epochs_{label}_to_random_hv")
        share = mean_sd([e / full if e is not None else None for e in reached], "{:.2f}")
        print(f"{title:34}{mean_sd(col(f'hv_{label}_third')):>18}{mean_sd(col(f'hv_{label}_full')):>18}"
              f"{mean_sd(reached, '{:.0f}') + ' (' + share + '; reached in ' + count_reached(reached) + ')':>54}")
    print("   goal: multi-objective ASHA reaches the full-budget random search's hypervolume in <= 1/3 of its epochs")

    print(f"\nB. ASHA's saving: the same 27 random proposals, ASHA (grace 1, eta {ETA}) vs every trial to {MAX_T} "
          f"epochs ({full} epochs)")
    print(f"   full-budget best val AbsRel {mean_sd(col('full_best'), '{:.4f}')}; ASHA best {mean_sd(col('asha_best'), '{:.4f}')}"
          f" after {mean_sd(col('asha_epochs'), '{:.0f}')} epochs in all")
    for tolerance in (2, 0.5):
        hits = col(f"asha_epochs_to_full_best_{tolerance}")
        print(f"   epochs until ASHA is within {tolerance:g} % of the full-budget best: {mean_sd(hits, '{:.0f}')} "
              f"= {mean_sd([h / full if h is not None else None for h in hits], '{:.2f}')} of {full} "
              f"(reached in {count_reached(hits)} seeds; the full-budget sweep itself got there after "
              f"{mean_sd(col(f'full_epochs_to_own_best_{tolerance}'), '{:.0f}')})"
              + ("; goal <= 1/3" if tolerance == 2 else ""))

    print("\nC. Warm start (single-objective TPE + ASHA, 27 trials): a cold sweep vs the same seed warm-started "
          "from an earlier sweep (another seed) of the same space")
    ratio = lambda a, b: [x / y if x is not None else None for x, y in zip(a, b)]  # noqa: E731
    print(f"   earlier sweep: {mean_sd(col('warm_start_trials'), '{:.1f}')} finished trials seed the warm sweep; "
          f"{mean_sd(col('warm_reused'), '{:.1f}')} of its 27 proposals repeat one of them (reused, not trained); "
          f"best val AbsRel: cold {mean_sd(col('cold_best'), '{:.4f}')}, warm {mean_sd(col('warm_best'), '{:.4f}')}")
    print(f"   {'to the cold best within':26}{'cold trials':>14}{'warm trials (seeds)':>24}{'warm/cold':>14}"
          f"{'warm/27':>14}{'cold epochs':>14}{'warm epochs':>14}{'warm/cold':>14}")
    for tolerance in (2, 0.5):
        cold, warm = col(f"cold_trials_{tolerance}"), col(f"warm_trials_{tolerance}")
        cold_epochs, warm_epochs = col(f"cold_epochs_{tolerance}"), col(f"warm_epochs_{tolerance}")
        print(f"   {f'{tolerance:g} %':26}{mean_sd(cold, '{:.1f}'):>14}"
              f"{mean_sd(warm, '{:.1f}') + ' (' + count_reached(warm) + ')':>24}{mean_sd(ratio(warm, cold), '{:.2f}'):>14}"
              f"{mean_sd([w / 27 if w is not None else None for w in warm], '{:.2f}'):>14}"
              f"{mean_sd(cold_epochs, '{:.0f}'):>14}{mean_sd(warm_epochs, '{:.0f}'):>14}"
              f"{mean_sd(ratio(warm_epochs, cold_epochs), '{:.2f}'):>14}")
    print("   (trials: proposals made until the best got there, reused ones included; goal: 2 % in <= 1/2 of the trials)")

    if args.real_trials:
        real = real_sweep(work, args.real_trials, args.tracking_uri, box)
        print(f"\nMEASURED: one real multi-objective ASHA sweep ({real['trials']} trials, real training, "
              f"{real['wall_s']:.0f} s): {real['epochs']} epochs, best val AbsRel {real['best']:.4f}, hypervolume "
              f"{real['hypervolume']:.3f} in the same box; front {real['front']}")
    print(f"\n(raw per-seed numbers: {json.dumps(rows)})")


if __name__ == "__main__":
    main()
