"""Six VGGT-1B LoRA trials on one GPU: packed by predicted memory vs one trial per GPU, side by side.

    PYTHONPATH=. python3 benchmarks/bench_gpu_sweep.py            # one GPU, ~4-4.5 min on an H200
    PYTHONPATH=. python3 benchmarks/bench_gpu_sweep.py --tiny     # CPU, tiny model: checks the logic

What runs. Not a Ray sweep: the GPU machine this is written for has no Ray. What runs is the
sweep's own packing logic and real training:
  - each trial's peak GPU memory is predicted from its config (`lora_train.memory.predict_peak_gib`,
    what `sweeps.packing.PackedResources` asks Ray for) and turned into a GPU share by the same
    function the sweep uses (`lora_train.memory.gpu_fraction`: + 10 % allocator margin + 1 GiB CUDA
    context, rounded up to 1/8);
  - the trials are placed on the GPU first-fit in the sweep's order (a trial starts as soon as its
    share fits in what is left, which is what Ray does with fractional GPUs on one node);
  - every trial is a real `python -m lora_train.train` process (`run_training` with the trial's
    config) on the same GPU, so what is measured is concurrent VGGT-1B LoRA training on one GPU.
Then the same six trials run one at a time (`gpus_per_trial: 1`: one trial per GPU).

Trials: strategies A, B, C at rank 16, then at rank 8 (the sweep's order); random-weight VGGT-1B
(camera + depth heads) built on the GPU in each trial process (`model.checkpoint: null`, nothing
downloaded), frozen base in bf16 (`model.base_dtype: auto`), bf16 autocast, one epoch of 20 steps of
8 views at width 518, micro-batch 1, 2 data workers per trial, validation on 2 windows, adapter
checkpoint saved. Data: synthetic ETH3D-format facade scenes (JPEG images, float32 depth maps,
distorted cameras) at 1512 x 1008, a quarter of ETH3D's 6048 x 4032 per side (full size takes
minutes per scene to raycast); written once and every view resampled to the training size and
cached before anything is timed, so the trials read the decoded-window cache a sweep's trials read.

Reported per trial and phase: trials per hour (trials / phase wall time), mean GPU utilisation
(nvidia-smi, sampled every 250 ms), steady step time packed vs alone (`time/steady_step_s`, the
mean of steps 2..20), data-stall share (`time/data_stall_share`: time waiting for batches / step
time), predicted peak memory (the packing prediction and the trial's own at the data's real
height, `cost/predicted_peak_gib`) vs measured (`cost/peak_mem_mb`: torch.cuda.max_memory_allocated),
and the GPU memory in use at the busiest moment (nvidia-smi, CUDA contexts included). A time budget
(`--budget-s`) stops launching trials that would not finish in time; skipped trials say so.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lora_train.config import load_config
from lora_train.memory import gpu_fraction, predict_peak_gib
from sweeps.packing import visible_gpu_gib
from vggt_common.files import atomic_dir

STRATEGIES = ("A", "B", "C")
RANKS = (16, 8)
TINY_GPU_GIB = 4.0  # --tiny: the pretend GPU the shares are computed for (two tiny trials per GPU)
FIRST_TRIAL_GUESS_S = 60.0  # a trial's duration before any has finished (for the time budget)


@dataclass
class Trial:
    name: str
    overrides: dict
    predicted_gib: float  # the packing prediction (from the config alone)
    share: float  # of one GPU


@dataclass
class Outcome:
    """One trial in one phase."""

    trial: Trial
    status: str = "skipped"
    started: float = 0.0
    ended: float = 0.0
    epoch: dict = field(default_factory=dict)  # the trial's epoch metrics (log.jsonl)
    note: str = ""

    @property
    def wall_s(self) -> float:
        return self.ended - self.started


# --- data --------------------------------------------------------------------------------------------


def _write_scene(args) -> None:
    from lora_train.data.synthetic import generate_scene, write_scene

    out, index, views, size = args
    write_scene(generate_scene("facade", index, seed=0, num_views=views, image_size=size), out)


def prepare_data(args) -> Path:
    """The benchmark's scenes (written once, in parallel, into the lora_train cache)."""
    from lora_train.data.cache import cache_dir

    root = cache_dir("scenes") / f"bench-gpu-sweep-facade-n{args.scenes}-v{args.views_per_scene}-{args.scene_size}"
    if (root / ".complete").is_file():
        print(f"data: {args.scenes} synthetic scenes x {args.views_per_scene} views at {args.scene_size} (cached) "
              f"in {root}", flush=True)
        return root
    start = time.perf_counter()
    size = tuple(int(v) for v in args.scene_size.split("x"))
    with atomic_dir(root) as tmp, ProcessPoolExecutor(min(args.scenes, os.cpu_count() or 1)) as pool:
        list(pool.map(_write_scene, [(tmp, i, args.views_per_scene, size) for i in range(args.scenes)]))
        (tmp / ".complete").write_text("")
    print(f"data: {args.scenes} synthetic scenes x {args.views_per_scene} views at {args.scene_size} written in "
          f"{time.perf_counter() - start:.0f} s to {root}", flush=True)
    return root


def warm_view_cache(config) -> None:
    """Resample every view of the trials' train and val scenes to the training size once (cached)."""
    from lora_train.builders import build_datasets

    start = time.perf_counter()
    jobs = [(scene, name, ds.width, ds.height) for ds in build_datasets(config)
            for scene in ds.scenes.values() for name in scene.view_names]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # OpenCV and NumPy release the GIL
        list(pool.map(lambda job: job[0].load_view(*job[1:]), jobs))
    print(f"data: {len(jobs)} views resampled to {jobs[0][2]}x{jobs[0][3]} and cached in "
          f"{time.perf_counter() - start:.0f} s", flush=True)


# --- trials ------------------------------------------------------------------------------------------


def make_trials(args, data_root: Path, device_type: str, gpu_gib: float) -> list[Trial]:
    common = {
        "model.preset": "tiny" if args.tiny else "vggt1b", "model.checkpoint": None,
        "model.overrides.enable_point": False, "data.root": str(data_root), "data.num_views": args.views,
        "data.width": args.width, "data.batch_size": 1, "data.num_workers": args.workers, "train.epochs": 1,
        "train.steps_per_epoch": args.steps, "train.progress_bar": False, "train.seed": 0,
        "eval.max_windows": 2, "eval.num_visualizations": 0, "optim.lr": 1e-4,
    }
    trials = []
    for rank in RANKS:
        for strategy in STRATEGIES:
            overrides = {**common, "lora.strategy": strategy, "lora.rank": rank}
            predicted = predict_peak_gib(load_config("default", overrides), device_type=device_type)
            trials.append(Trial(f"{strategy} r{rank}", overrides, predicted, gpu_fraction(predicted, gpu_gib)))
    return trials


def launch(trial: Trial, out_dir: Path, env: dict) -> subprocess.Popen:
    out_dir.mkdir(parents=True, exist_ok=True)
    flags = [item for key, value in trial.overrides.items() for item in (f"--{key}", "null" if value is None else str(value))]
    with open(out_dir / "stdout.log", "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "lora_train.train", "--config", "default", "--output-dir",
                                 str(out_dir), "--train.overwrite", "true", *flags],
                                stdout=log, stderr=subprocess.STDOUT, env=env)


def collect(outcome: Outcome, out_dir: Path, returncode: int) -> None:
    records = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()] \
        if (out_dir / "log.jsonl").is_file() else []
    epochs = [r for r in records if r.get("event") == "epoch"]
    outcome.epoch = epochs[-1] if epochs else {}
    outcome.status = "completed" if returncode == 0 and epochs else "failed"
    if outcome.status == "failed":
        lines = [line for line in (out_dir / "stdout.log").read_text().splitlines() if line.strip()]
        outcome.note = (lines[-1] if lines else f"exit code {returncode}")[:160]


class GpuSampler(threading.Thread):
    """nvidia-smi's utilisation and memory in use, every 250 ms: [(time, util %, used MiB)]."""

    def __init__(self):
        super().__init__(daemon=True)
        index = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
        self.samples: list[tuple[float, float, float]] = []
        self.proc = subprocess.Popen(
            ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
             "-lms", "250"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def run(self):
        for line in self.proc.stdout:
            try:
                util, used = (float(v) for v in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.time(), util, used))

    def window(self, start: float, end: float) -> tuple[float, float]:
        """(mean utilisation %, most memory in use GiB) between two times."""
        inside = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not inside:
            return float("nan"), float("nan")
        return sum(u for u, _ in inside) / len(inside), max(m for _, m in inside) / 1024

    def stop(self):
        self.proc.terminate()


def run_phase(label: str, trials: list[Trial], shares: list[float], work: Path, env: dict, deadline: float,
              earlier: dict) -> tuple[list[Outcome], float, float, dict]:
    """Run `trials` first-fit on one GPU by `shares`; returns (outcomes, start, end, seconds per
    strategy). A trial is launched only if it should finish before `deadline`, judged by the longest
    trial of its strategy in this phase so far, else in the `earlier` phase."""
    durations = {}
    print(f"\n{label}: {len(trials)} trials, GPU shares {', '.join(f'{s:g}' for s in shares)}", flush=True)
    outcomes = [Outcome(t) for t in trials]
    pending, running, free = list(range(len(trials))), {}, 1.0
    start = time.time()
    while pending or running:
        for i in list(pending):
            if shares[i] > free + 1e-9:
                continue
            strategy = trials[i].overrides["lora.strategy"]
            guess = durations.get(strategy) or earlier.get(strategy) or FIRST_TRIAL_GUESS_S
            if time.time() + guess > deadline:
                outcomes[i].note = f"skipped: would end after the time budget (a {guess:.0f} s trial)"
                pending.remove(i)
                continue
            out_dir = work / label.split()[0] / f"trial{i}"
            running[i] = (launch(trials[i], out_dir, env), out_dir)
            outcomes[i].started = time.time()
            free -= shares[i]
            pending.remove(i)
        for i, (proc, out_dir) in list(running.items()):
            if proc.poll() is None:
                continue
            outcome = outcomes[i]
            outcome.ended = time.time()
            collect(outcome, out_dir, proc.returncode)
            durations[trials[i].overrides["lora.strategy"]] = max(outcome.wall_s,
                                                                  durations.get(trials[i].overrides["lora.strategy"], 0))
            free += shares[i]
            del running[i]
            e = outcome.epoch
            print(f"  {trials[i].name:7s} {outcome.status} in {outcome.wall_s:5.1f} s (started at "
                  f"+{outcome.started - start:.0f} s): steady step {fmt(e.get('time/steady_step_s'), 3)} s, "
                  f"data stall {pct(e.get('time/data_stall_share'))}, peak {gib(e)} GiB measured vs "
                  f"{fmt(e.get('cost/predicted_peak_gib'), 2)} predicted {outcome.note}", flush=True)
        time.sleep(0.2)
    end = max([o.ended for o in outcomes if o.ended] or [time.time()])
    return outcomes, start, end, durations


# --- report ------------------------------------------------------------------------------------------


def fmt(value, digits: int) -> str:
    return "-" if value is None else "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def gib(epoch: dict) -> str:
    return fmt(epoch["cost/peak_mem_mb"] / 1024, 2) if "cost/peak_mem_mb" in epoch else "-"


def phase_summary(label: str, outcomes: list[Outcome], start: float, end: float, sampler) -> dict:
    done = [o for o in outcomes if o.status == "completed"]
    wall = end - start
    util, used = sampler.window(start, end) if sampler else (float("nan"), float("nan"))
    row = {"phase": label, "trials": len(done), "wall_s": wall, "per_hour": 3600 * len(done) / wall if wall else 0.0,
           "util": util, "used_gib": used}
    print(f"{label}: {len(done)} of {len(outcomes)} trials completed in {wall:.0f} s = {row['per_hour']:.0f} "
          f"trials/hour; mean GPU utilisation {fmt(util, 0)}%, at most {fmt(used, 1)} GiB of GPU memory in use",
          flush=True)
    return row


def markdown(trials, packed, alone, phases, gpu_name: str, gpu_gib: float, args) -> str:
    lines = [(f"Six LoRA trials on one {gpu_name} ({gpu_gib:.1f} GiB), {'tiny VGGT' if args.tiny else 'VGGT-1B'}, "
              f"{args.views} views x {args.width}, {args.steps} steps; packed = gpus_per_trial auto (shares from "
              "lora_train.memory, first-fit), alone = one trial per GPU. Real lora_train processes, no Ray."), "",
             "| phase | trials done | wall s | trials / hour | mean GPU util | most GPU memory in use GiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in phases:
        lines.append(f"| {row['phase']} | {row['trials']} | {row['wall_s']:.0f} | {row['per_hour']:.0f} | "
                     f"{fmt(row['util'], 0)}% | {fmt(row['used_gib'], 1)} |")
    if len(phases) == 2 and phases[1]["per_hour"]:
        lines.append(f"| packed / alone | | | {phases[0]['per_hour'] / phases[1]['per_hour']:.2f}x | | |")
    lines += ["", ("| trial | share | predicted GiB (packing / at data height) | measured peak GiB packed / alone | "
                   "steady step s packed / alone | packed / alone | data stall packed / alone |"),
              "|---|---:|---:|---:|---:|---:|---:|"]
    for trial, p, a in zip(trials, packed, alone):
        sp, sa = p.epoch.get("time/steady_step_s"), a.epoch.get("time/steady_step_s")
        ratio = f"{sp / sa:.2f}x" if sp and sa else "-"
        lines.append(f"| {trial.name} | {trial.share:g} | {trial.predicted_gib:.2f} / "
                     f"{fmt(p.epoch.get('cost/predicted_peak_gib') or a.epoch.get('cost/predicted_peak_gib'), 2)} | "
                     f"{gib(p.epoch)} / {gib(a.epoch)} | {fmt(sp, 3)} / {fmt(sa, 3)} | {ratio} | "
                     f"{pct(p.epoch.get('time/data_stall_share'))} / {pct(a.epoch.get('time/data_stall_share'))} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (default without CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="steps per trial (default 20; --tiny 2)")
    parser.add_argument("--views", type=int, default=None, help="views per window (default 8; --tiny 2)")
    parser.add_argument("--width", type=int, default=None, help="image width (default 518; --tiny 56)")
    parser.add_argument("--workers", type=int, default=None, help="data workers per trial (default 2; --tiny 0)")
    parser.add_argument("--scenes", type=int, default=4, help="synthetic scenes (3 train, 1 val)")
    parser.add_argument("--views-per-scene", type=int, default=None, help="default 12; --tiny 6")
    parser.add_argument("--scene-size", default=None, help="synthetic image size WxH (default 1512x1008; --tiny 384x256)")
    parser.add_argument("--gpu-gib", type=float, default=None, help="GPU memory for the shares (default: nvidia-smi)")
    parser.add_argument("--budget-s", type=float, default=270.0, help="no trial is launched that would end later")
    parser.add_argument("--out", default="/tmp/bench_gpu_sweep", help="trial folders and the markdown table")
    args = parser.parse_args(argv)
    started = time.time()
    deadline = started + args.budget_s

    import torch  # after argparse: --help stays fast

    cuda = torch.cuda.is_available() and not args.tiny
    args.tiny = not cuda
    defaults = {"steps": 2, "views": 2, "width": 56, "workers": 0, "views_per_scene": 6, "scene_size": "384x256"} \
        if args.tiny else {"steps": 20, "views": 8, "width": 518, "workers": 2, "views_per_scene": 12,
                           "scene_size": "1512x1008"}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    gpu_gib = args.gpu_gib or (TINY_GPU_GIB if args.tiny else visible_gpu_gib())
    if not gpu_gib:
        raise SystemExit("cannot read the GPU's memory with nvidia-smi; pass --gpu-gib")
    gpu_name = torch.cuda.get_device_name(0) if cuda else "pretend GPU (CPU run, --tiny)"
    print(f"torch {torch.__version__}, {gpu_name}, {gpu_gib:.1f} GiB; packing logic of sweeps/packing.py run here "
          "without Ray (first-fit of predicted GPU shares); trials are real lora_train processes", flush=True)

    data_root = prepare_data(args)
    trials = make_trials(args, data_root, "cuda" if cuda else "cpu", gpu_gib)
    warm_view_cache(load_config("default", trials[0].overrides))
    for trial in trials:
        print(f"  {trial.name:7s} predicted peak {trial.predicted_gib:6.2f} GiB → GPU share {trial.share:g}")
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 4)), "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, "-c", "import lora_train.train"], env=env, check=True)  # warm file caches
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    print(f"setup done in {time.time() - started:.0f} s", flush=True)

    sampler = GpuSampler() if cuda else None
    if sampler:
        sampler.start()
    durations: dict[str, float] = {}
    phases, results = [], []
    for label, shares in (("packed (gpus_per_trial auto)", [t.share for t in trials]),
                          ("alone (gpus_per_trial 1)", [1.0] * len(trials))):
        outcomes, start, end, durations = run_phase(label, trials, shares, work, env, deadline, durations)
        results.append(outcomes)
        phases.append(phase_summary(label.split(" (")[0], outcomes, start, end, sampler))
    if sampler:
        sampler.stop()
    table = markdown(trials, results[0], results[1], phases, gpu_name, gpu_gib, args)
    (work / "bench_gpu_sweep.md").write_text(table + "\n")
    print("\n" + table + f"\n\n(table also in {work / 'bench_gpu_sweep.md'}); total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
