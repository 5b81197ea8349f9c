"""Run a LoRA sweep: Optuna (define-by-run TPE) under ASHA on Ray Tune, every trial in MLflow.

    python sweeps/run.py --space sweeps/strategies.yaml
    python sweeps/run.py --space sweeps/strategies.yaml --num-samples 8 --max-epochs 4
    python sweeps/run.py --space sweeps/strategies.yaml --resume          # after Ctrl-C or a killed driver
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python sweeps/run.py --space sweeps/strategies.yaml --tracking-uri http://MLFLOW:5000

Embedded defaults: a local Ray (dashboard on 127.0.0.1), synthetic ETH3D-format facade scenes and
the tiny pretrained VGGT base (both built once into a cache), the local MLflow server of
`tracking`. The sweep's storage folder `<storage-path>/<name>/` holds the Ray experiment, the
Optuna study (`optuna.db`, unless `--optuna-storage` names a database), the MLflow parent run id
and, at the end, `leaderboard.csv/.md`.

Exit codes: 0 done, 1 no trial produced a result, 2 bad input (one line on stderr, nothing
written), 130 interrupted (the last line says how to resume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python sweeps/run.py` from a checkout, without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_train.errors import ArgumentParser, cli_main
from sweeps.preflight import DEFAULT_STORAGE
from sweeps.champion import BASE_MODES
from sweeps.space import AUTO


def gpus_per_trial(text: str) -> float | str:
    """`--gpus-per-trial`: a number, or "auto" (sweeps/packing.py)."""
    if text == AUTO:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or {AUTO}, got {text!r}") from None


def parse_args(argv):
    p = ArgumentParser(prog="python sweeps/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True, help="search-space YAML (e.g. sweeps/strategies.yaml)")
    p.add_argument("--data-root", help="ETH3D-format dataset folder (default: synthetic facades, cached)")
    p.add_argument("--checkpoint", help="VGGT-1B model.pt to fine-tune instead of the tiny base")
    p.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI or a local server)")
    p.add_argument("--experiment", help="MLflow experiment (default: the sweep name)")
    p.add_argument("--num-samples", type=int, help="trials in total (with --resume: extends a sweep)")
    p.add_argument("--max-epochs", type=int, help="epochs of a trial ASHA never stops")
    p.add_argument("--max-concurrent", type=int, help="cap on concurrent trials (0: from resources)")
    p.add_argument("--gpus-per-trial", type=gpus_per_trial, metavar="N|auto",
                   help="GPUs per trial (0: CPU workers; auto: the GPU share of the trial's predicted peak memory)")
    p.add_argument("--workers-per-trial", type=int, help="DDP workers per trial")
    p.add_argument("--max-failures", type=int, help="retries of a failing trial")
    p.add_argument("--storage-path", help=f"where sweeps are stored (default: ./{DEFAULT_STORAGE}); "
                                          "shared storage (NFS) on a multi-node cluster")
    p.add_argument("--name", help="sweep name (default: the space's name)")
    p.add_argument("--resume", action="store_true", help="continue the sweep of this name")
    p.add_argument("--optuna-storage", metavar="URL",
                   help="Optuna study storage, e.g. postgresql://USER@HOST:5432/DB (password from PGPASSWORD "
                        "or ~/.pgpass; default: the space's sampler.storage, else optuna.db in the sweep folder)")
    p.add_argument("--address", help="Ray cluster (e.g. auto, ray://head:10001; default: $RAY_ADDRESS or local)")
    p.add_argument("--champion-base", choices=BASE_MODES, default="auto",
                   help="how the registered champion carries its base: embedded (auto: up to 512 MiB), "
                        "a checked reference (sha256; $VGGT_BASE_CHECKPOINT at load), or merged weights")
    p.add_argument("--interrupt-grace", type=float, default=60.0, metavar="S",
                   help="after Ctrl-C, seconds running trials may take to reach their next checkpoint")
    p.add_argument("--verbose", action="store_true",
                   help="everything on the console: trial output, library warnings and INFO lines, MLflow's "
                        "run links (by default they go to driver.log and trials/<id>/trial.log in the sweep folder)")
    p.add_argument("--warm-start", nargs="+", default=[], metavar="NAME",
                   help="MLflow experiments of earlier sweeps whose finished trials seed the search "
                        "(mapped onto this space; a fresh start only)")
    p.add_argument("--rerun-duplicates", action="store_true",
                   help="train a proposal again even when a --warm-start run finished the same configuration")
    return p.parse_args(argv)


@cli_main
def main(argv=None, train_fn=None) -> int:
    """The CLI; `train_fn` replaces `lora_train.train.run_training` in the trials (tests)."""
    from sweeps.driver import run_sweep
    from sweeps.interrupts import SweepInterrupted

    args = parse_args(argv)
    try:
        summary = run_sweep(args, train_fn=train_fn)
    except SweepInterrupted as stop:
        print(stop, file=sys.stderr, flush=True)
        return 130
    return 0 if summary.get("best_trial") else 1  # 1: no trial produced a result


if __name__ == "__main__":
    sys.exit(main())
