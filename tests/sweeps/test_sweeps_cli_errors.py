"""`python sweeps/run.py` rejects bad spaces and flags with one line and exit code 2, writing nothing."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SPACE = (REPO / "sweeps" / "strategies.yaml").read_text()

CASES = [
    # (space text or None for the shipped one, extra flags, words in the message)
    (DEFAULT_SPACE.replace("  num_samples: 8", "  num_samples: 8\n  num_trials: 3"), [], ":18: budget.num_trials: unknown key"),
    (DEFAULT_SPACE.replace("lora.rank: {type: int, low: 4, high: 16", "lora.rank: {type: int, low: 16, high: 4"), [], "lora.rank: empty range"),
    (DEFAULT_SPACE.replace("  A: {}", "  Z: {}"), [], "unknown strategy 'Z'"),
    (DEFAULT_SPACE.replace("optim.weight_decay:", "optim.weight_decy:"), [], "unknown config key 'optim.weight_decy'"),
    (DEFAULT_SPACE.replace("data.num_views: {choices: [2, 3]}", "data.num_views: {choices: [2, three]}"), [], "data.num_views"),
    (None, ["--num-samples", "0"], "--num-samples: must be >= 1"),
    (None, ["--max-epochs", "0"], "--max-epochs: must be >= 1"),
    (None, ["--data-root", "/nonexistent/eth3d"], "--data-root: not a directory"),
    (None, ["--checkpoint", "/nonexistent/model.pt"], "--checkpoint: file not found"),
    (None, ["--resume"], "--resume: no sweep named"),
    (DEFAULT_SPACE.replace("launcher: auto", "launcher: in_trial"), ["--workers-per-trial", "2"],
     "--workers-per-trial: launcher in_trial runs one process"),
]


@pytest.mark.parametrize("text,flags,words", CASES, ids=[c[2] for c in CASES])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, monkeypatch, text, flags, words):
    from sweeps.run import main

    space = REPO / "sweeps" / "strategies.yaml"
    if text is not None:
        space = tmp_path / "space.yaml"
        space.write_text(text)
    storage = tmp_path / "store"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--space", str(space), "--storage-path", str(storage), "--tracking-uri", "http://127.0.0.1:9", *flags])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert words in lines[0], lines[0]
    assert not storage.exists()  # nothing written (and MLflow, at a dead port, never contacted)


def test_script_exits_2(tmp_path):
    """`python sweeps/run.py` as users run it: one `error:` line, exit code 2."""
    bad = tmp_path / "space.yaml"
    bad.write_text(DEFAULT_SPACE.replace("mode: min", "mode: lowest"))
    proc = subprocess.run([sys.executable, "sweeps/run.py", "--space", str(bad)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"error: {bad}:14: mode: expected min or max, got 'lowest'"]
