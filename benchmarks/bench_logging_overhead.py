"""Logging overhead on a training-like loop: our MetricLogger vs no logging vs naive per-call MLflow.

A loop of STEPS steps; each step does a fixed amount of simulated work (a float32 matmul chain
calibrated to --work-ms) and logs METRICS scalars. Printed side by side, measured in one run:

    no logging              wall time of the bare loop
    MetricLogger            log_metrics() every step, flush() every --epoch-steps steps (an epoch
                            boundary; default: once, at the end) and close(), all included in
                            the wall time; the loop alone (before the final flush) is shown too
    naive mlflow.log_metric one synchronous call per metric per step (run for --naive-steps
                            steps only, because it is slow, and extrapolated to STEPS)

Goal: MetricLogger / no logging <= 1.01. No-logging and MetricLogger runs are interleaved and
repeated (--repeats) and the medians are compared, because the CPUs may be shared.

    python benchmarks/bench_logging_overhead.py [--tracking-uri http://127.0.0.1:5000]

Without --tracking-uri a real `mlflow server` is started in a temporary directory and stopped.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from tracking.logger import MetricLogger
from tracking.runs import SweepTracker
from tracking.server import MlflowServer, validate_tracking_uri

METRIC_NAMES = ["train/loss", "train/camera", "train/conf_depth", "train/reg_depth", "train/grad_depth",
                "train/lr", "time/step_s", "cost/peak_mem_mb"]


def make_work(target_ms: float):
    """A step of fixed compute: `repeats` matmuls of 256×256 float32 taking about `target_ms`."""
    torch.set_num_threads(1)
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def work(repeats: int):
        for _ in range(repeats):
            torch.mm(a, b)

    work(20)
    start = time.perf_counter()
    work(200)
    per_mm_ms = (time.perf_counter() - start) * 1000 / 200
    repeats = max(1, round(target_ms / per_mm_ms))
    return lambda: work(repeats), repeats * per_mm_ms


def metrics_at(step: int) -> dict:
    return {name: 1.0 / (step + 1 + i) for i, name in enumerate(METRIC_NAMES[: ARGS.metrics])}


def run_bare(step_work) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    for step in range(ARGS.steps):
        step_work()
        metrics_at(step)  # the trainer computes its scalars either way
    return time.perf_counter() - start, time.process_time() - cpu


def run_ours(step_work, uri: str, run_id: str, spool: Path) -> tuple[float, float, float, float, int]:
    logger = MetricLogger(uri, run_id, spool, send_interval=ARGS.send_interval)
    call_s = 0.0
    start, cpu = time.perf_counter(), time.process_time()
    for step in range(ARGS.steps):
        step_work()
        metrics = metrics_at(step)
        t0 = time.perf_counter()
        logger.log_metrics(metrics, step)
        call_s += time.perf_counter() - t0
        if (step + 1) % ARGS.epoch_steps == 0 and step + 1 < ARGS.steps:
            logger.flush()
    loop = time.perf_counter() - start
    logger.close()  # = the flush at the last epoch boundary
    wall = time.perf_counter() - start
    return wall, loop, time.process_time() - cpu, call_s / ARGS.steps, logger.requests_sent


def run_naive(step_work, uri: str, run_id: str) -> float:
    import mlflow

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        start = time.perf_counter()
        for step in tqdm(range(ARGS.naive_steps), desc="naive mlflow.log_metric steps"):
            step_work()
            for key, value in metrics_at(step).items():
                mlflow.log_metric(key, value, step=step)
        return time.perf_counter() - start


def plot_times(times: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = ax.bar(list(times), list(times.values()), color=["tab:gray", "tab:blue", "tab:blue", "tab:red"])
    base = times["no logging"]
    for bar, value in zip(bars, times.values()):
        ax.annotate(f"{value:.2f} s\n×{value / base:.2f}", (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set(ylabel="wall time (s, log scale)",
           title=f"{ARGS.steps} steps × {ARGS.metrics} metrics: logging overhead")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    server = None
    cpus = sorted(os.sched_getaffinity(0))
    isolate = ARGS.isolate_server and not ARGS.tracking_uri and len(cpus) >= 2
    if isolate:  # the server gets the last CPU (inherited by its workers), the loop the others
        os.sched_setaffinity(0, {cpus[-1]})
    if ARGS.tracking_uri:
        uri = validate_tracking_uri(ARGS.tracking_uri)
    else:
        server = MlflowServer(tempfile.mkdtemp(prefix="bench-mlflow-"))
        print("starting a local mlflow server ...", flush=True)
        uri = server.start(timeout=300)
    if isolate:
        os.sched_setaffinity(0, set(cpus[:-1]))
        torch.set_num_threads(len(cpus) - 1)
        print(f"server pinned to CPU {cpus[-1]}, training loop + logger thread to CPUs {cpus[:-1]}", flush=True)
    try:
        tracker = SweepTracker(uri, "bench-logging-overhead")
        tracker.open_parent("bench-logging-overhead", {}, "{}\n")
        step_work, work_ms = make_work(ARGS.work_ms)
        spool_dir = Path(tempfile.mkdtemp(prefix="bench-spool-"))
        bare, ours, loops, call_us, requests = [], [], [], [], 0
        bare_cpu, ours_cpu = [], []
        for repeat in tqdm(range(ARGS.repeats), desc="no logging / MetricLogger repeats"):
            wall, cpu = run_bare(step_work)
            bare.append(wall)
            bare_cpu.append(cpu)
            run_id = tracker.open_trial(f"ours-{time.time_ns()}", {})
            wall, loop, cpu, per_call, requests = run_ours(step_work, uri, run_id, spool_dir / f"{repeat}.jsonl")
            ours.append(wall)
            ours_cpu.append(cpu)
            loops.append(loop)
            call_us.append(per_call * 1e6)
            tracker.close_trial(run_id, "completed")
        run_id = tracker.open_trial(f"naive-{time.time_ns()}", {})
        naive = run_naive(step_work, uri, run_id)
        tracker.close_trial(run_id, "completed")
    finally:
        if server:
            server.stop()

    bare_s, ours_s, loop_s = statistics.median(bare), statistics.median(ours), statistics.median(loops)
    naive_s = naive / ARGS.naive_steps * ARGS.steps
    n_metrics = ARGS.steps * ARGS.metrics
    print(f"\n{ARGS.steps} steps × {ARGS.metrics} metrics, simulated work {work_ms:.2f} ms/step, "
          f"flush every {ARGS.epoch_steps} steps, send interval {ARGS.send_interval} s, "
          f"median of {ARGS.repeats} interleaved repeats, server {uri}")
    print(f"{'mode':<26}{'wall s':>10}{'ms/step':>10}{'vs no logging':>15}")
    print(f"{'no logging':<26}{bare_s:>10.3f}{bare_s / ARGS.steps * 1e3:>10.3f}{1.0:>15.3f}")
    print(f"{'MetricLogger (ours)':<26}{ours_s:>10.3f}{ours_s / ARGS.steps * 1e3:>10.3f}{ours_s / bare_s:>15.3f}")
    print(f"{'  loop only, no flush':<26}{loop_s:>10.3f}{loop_s / ARGS.steps * 1e3:>10.3f}{loop_s / bare_s:>15.3f}")
    print(f"{'naive mlflow.log_metric':<26}{naive_s:>10.3f}{naive_s / ARGS.steps * 1e3:>10.3f}{naive_s / bare_s:>15.1f}"
          f"   (measured on {ARGS.naive_steps} steps, extrapolated)")
    print(f"\nMetricLogger: log_metrics() call {statistics.median(call_us):.1f} µs median, "
          f"{requests} log-batch requests for {n_metrics} metric entries; "
          f"naive: {n_metrics} requests, {naive / (ARGS.naive_steps * ARGS.metrics) * 1e3:.1f} ms each")
    print(f"all runs (s): no logging {', '.join(f'{x:.3f}' for x in bare)}; ours {', '.join(f'{x:.3f}' for x in ours)}")
    print(f"fastest runs (least disturbed by other load): no logging {min(bare):.3f} s, ours {min(ours):.3f} s "
          f"(ratio {min(ours) / min(bare):.4f}), loop only {min(loops):.3f} s (ratio {min(loops) / min(bare):.4f})")
    cpu_b, cpu_o = statistics.median(bare_cpu), statistics.median(ours_cpu)
    print(f"CPU time of this process (training thread + logger thread, insensitive to other load): "
          f"no logging {cpu_b:.3f} s, ours {cpu_o:.3f} s (ratio {cpu_o / cpu_b:.4f}); the server's own CPU is not included")
    if ARGS.plot:
        plot_times({"no logging": bare_s, "MetricLogger\n(loop only)": loop_s, "MetricLogger\n(+ final flush)": ours_s,
                    "naive log_metric\n(extrapolated)": naive_s}, ARGS.plot)
        print(f"plot: {ARGS.plot}")
    goal = ours_s / bare_s <= 1.01
    print(f"goal ours/no-logging <= 1.01: {'met' if goal else 'NOT met'} ({ours_s / bare_s:.4f})")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=8, choices=range(1, len(METRIC_NAMES) + 1))
    parser.add_argument("--work-ms", type=float, default=3.0, help="simulated compute per step")
    parser.add_argument("--epoch-steps", type=int, default=None, help="flush() every this many steps (default: --steps)")
    parser.add_argument("--send-interval", type=float, default=0.25, help="MetricLogger background send interval")
    parser.add_argument("--naive-steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", default=None, help="write a bar chart PNG here")
    parser.add_argument("--no-isolate-server", dest="isolate_server", action="store_false",
                        help="share all CPUs between the local server and the loop (default: the server gets "
                             "its own CPU, as a remote tracking server would)")
    ARGS = parser.parse_args()
    ARGS.epoch_steps = ARGS.epoch_steps or ARGS.steps
    sys.exit(main())
