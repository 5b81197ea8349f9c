"""ASHA's saving: epochs spent vs running every trial to max_epochs, best val AbsRel of both.

Runs the same space twice with a seeded random sampler (so both sweeps try the same configs):
once with ASHA (the space's grace period and reduction factor), once with ASHA off (grace period =
max_epochs, every trial runs to the end). Real training, real Ray and MLflow.

    python benchmarks/bench_asha_savings.py [--space sweeps/strategies.yaml] [--num-samples 8] [--max-epochs 4]
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from sweeps.driver import run_sweep  # noqa: E402
from sweeps.run import parse_args  # noqa: E402


def space_variant(src: Path, out: Path, *, asha: bool, max_epochs: int, name: str) -> Path:
    raw = yaml.safe_load(src.read_text())
    raw["name"] = name
    raw.setdefault("sampler", {})["type"] = "random"
    raw["sampler"].pop("multivariate", None)
    raw["sampler"]["group"] = False
    raw.setdefault("asha", {})
    raw["budget"]["max_epochs"] = max_epochs
    raw["selection"] = {"top_k": 0}  # the search alone: no confirm phase after it
    if not asha:
        raw["asha"]["grace_period"] = max_epochs
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="sweeps/strategies.yaml")
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--max-epochs", type=int, default=4)
    p.add_argument("--tracking-uri", default=None)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-asha-"))
    results = {}
    for label, asha in (("asha", True), ("no_asha", False)):
        space = space_variant(Path(args.space), work / f"{label}.yaml", asha=asha,
                              max_epochs=args.max_epochs, name=f"bench-{label}-{work.name[-6:]}")
        flags = ["--space", str(space), "--storage-path", str(work / "store"),
                 "--num-samples", str(args.num_samples)]
        if args.tracking_uri:
            flags += ["--tracking-uri", args.tracking_uri]
        summary = run_sweep(parse_args(flags))
        rows = summary["rows"]
        results[label] = {
            "epochs": sum(int(r["epochs"] or 0) for r in rows),
            "best": min((r["best_val_abs_rel"] for r in rows if r["best_val_abs_rel"] is not None), default=float("nan")),
            "wall_s": summary["wall_s"],
        }
    full = args.num_samples * args.max_epochs
    a, b = results["asha"], results["no_asha"]
    print()
    print(f"{'':24}{'ASHA':>12}{'every trial to max':>22}{'ratio':>10}")
    print(f"{'epochs trained':24}{a['epochs']:>12}{b['epochs']:>22}{a['epochs'] / max(1, b['epochs']):>10.2f}")
    print(f"{'best val AbsRel':24}{a['best']:>12.4f}{b['best']:>22.4f}{a['best'] / b['best']:>10.3f}")
    print(f"{'sweep wall s':24}{a['wall_s']:>12.0f}{b['wall_s']:>22.0f}{a['wall_s'] / b['wall_s']:>10.2f}")
    print(f"compute saved by ASHA: {1 - a['epochs'] / full:.1%} of {full} trial-epochs")


if __name__ == "__main__":
    main()
