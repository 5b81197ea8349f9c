"""Bad inputs → one line on stderr, exit code 2, nothing half-written (storage, outputs, MLflow).

Covers the sweep CLI (space YAML and CLI values) and the training CLI (training config, ETH3D
tree, checkpoint). Each case runs the CLI's `main` in-process — the same code path as the command
line, minus the interpreter start — and two cases also run as real processes to show the exit
code of the executable itself. Every outcome lands in the fault summary (tests/faults/SUMMARY.md).
"""

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.faults.fault_summary import record

pytestmark = [pytest.mark.faults]

GOOD_SPACE = textwrap.dedent("""\
    name: faults-bad-inputs
    budget: {num_samples: 2, max_epochs: 2}
    resources: {cpus_per_trial: 1, workers_per_trial: 1}
    asha: {grace_period: 1, reduction_factor: 2}
    strategies: {A: {}, B: {}}
    parameters:
      lora.rank: {type: int, low: 4, high: 8}
      optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    """)

# (case id, culprit the one-line message must name, edit of the good space text)
SPACE_CASES = [
    ("space-invalid-yaml", "invalid YAML", lambda s: s + "parameters: [unclosed\n"),
    ("space-unknown-top-key", "budgett", lambda s: s.replace("budget:", "budgett:")),
    ("space-empty-int-range", "lora.rank", lambda s: s.replace("low: 4, high: 8", "low: 8, high: 4")),
    ("space-unknown-strategy", "Z", lambda s: s.replace("B: {}", "Z: {}")),
    ("space-bad-type", "num_samples", lambda s: s.replace("num_samples: 2", "num_samples: many")),
    ("space-grace-over-max", "grace_period", lambda s: s.replace("grace_period: 1", "grace_period: 5")),
    ("space-unknown-train-key", "lora.rnk", lambda s: s.replace("lora.rank:", "lora.rnk:")),
    ("space-bad-sampler", "sampler", lambda s: s + "sampler: {type: grid}\n"),
    ("space-log-range-at-zero", "optim.lr", lambda s: s.replace("low: 1.0e-4", "low: 0.0")),
    ("space-not-a-mapping", "mapping", lambda s: "- just\n- a list\n"),
    ("space-storage-password", "sampler.storage",
     lambda s: s + "sampler: {storage: 'postgresql://optuna:hunter2-pw@db.lan:5432/optuna'}\n"),
    ("space-storage-not-a-url", "sampler.storage", lambda s: s + "sampler: {storage: optuna.db}\n"),
]

# (case id, flag the message must name, extra CLI arguments)
CLI_CASES = [
    ("cli-missing-space", "--space", ["--space", "{tmp}/nope.yaml"]),
    ("cli-num-samples-0", "--num-samples", ["--num-samples", "0"]),
    ("cli-max-epochs-0", "--max-epochs", ["--max-epochs", "0"]),
    ("cli-gpus-nan", "--gpus-per-trial", ["--gpus-per-trial", "nan"]),
    ("cli-workers-0", "--workers-per-trial", ["--workers-per-trial", "0"]),
    ("cli-max-concurrent-neg", "--max-concurrent", ["--max-concurrent", "-1"]),
    ("cli-bad-name", "--name", ["--name", "../escape"]),
    ("cli-missing-data-root", "--data-root", ["--data-root", "{tmp}/no-such-dir"]),
    ("cli-missing-checkpoint", "--checkpoint", ["--checkpoint", "{tmp}/no-such-model.pt"]),
    ("cli-resume-unknown-sweep", "--resume", ["--resume"]),
    ("cli-object-store-path", "--storage-path", ["--storage-path", "s3://bucket/sweeps"]),
    ("cli-not-a-number", "--num-samples", ["--num-samples", "many"]),
]


def _assert_clean_rejection(case, culprit, code, stderr):
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    ok = code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0]
    detail = re.sub(r"(/[\w.+-]+){2,}/", ".../", lines[-1]) if lines else f"exit {code}, no message"
    record("inputs", case, ok, f"exit {code}: {detail}")
    assert code == 2, f"{case}: exit code {code}, stderr: {stderr[-1000:]}"
    assert len(lines) == 1, f"{case}: {len(lines)} lines on stderr:\n{stderr[-2000:]}"
    assert lines[0].startswith("error: ") and culprit in lines[0], f"{case}: {lines[0]!r} does not name {culprit!r}"


def _run_main(main, argv, capfd) -> tuple[int, str]:
    capfd.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capfd.readouterr().err


def _mlflow_state(client) -> tuple[set[str], int]:
    """(experiment ids, number of runs in them): what a rejected input must leave unchanged (the
    server is shared with other tests, so only the difference counts)."""
    experiments = {e.experiment_id for e in client.search_experiments()}
    runs = len(client.search_runs(sorted(experiments), max_results=50000)) if experiments else 0
    return experiments, runs


def _no_mlflow_trace(client, before: tuple[set[str], int]):
    after = _mlflow_state(client)
    assert after[0] == before[0], f"experiments created by a rejected input: {after[0] - before[0]}"
    assert after[1] == before[1], f"runs created by a rejected input: {after[1] - before[1]}"


@pytest.fixture(scope="module")
def mlflow_client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(mlflow_server)


@pytest.mark.parametrize("case,culprit,edit", SPACE_CASES, ids=[c[0] for c in SPACE_CASES])
def test_bad_space_file(case, culprit, edit, tmp_path, capfd, mlflow_server, mlflow_client, monkeypatch):
    from sweeps.run import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    space = tmp_path / "space.yaml"
    space.write_text(edit(GOOD_SPACE))
    storage = tmp_path / "store"
    before = _mlflow_state(mlflow_client)
    code, err = _run_main(main, ["--space", str(space), "--storage-path", str(storage),
                                 "--tracking-uri", mlflow_server], capfd)
    _assert_clean_rejection(case, culprit, code, err)
    assert not storage.exists() or not any(storage.iterdir()), f"{case}: wrote {list(storage.rglob('*'))}"
    _no_mlflow_trace(mlflow_client, before)


@pytest.mark.parametrize("case,culprit,extra", CLI_CASES)
def test_bad_sweep_cli_value(case, culprit, extra, tmp_path, capfd, mlflow_server, mlflow_client, monkeypatch):
    from sweeps.run import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    space = tmp_path / "space.yaml"
    space.write_text(GOOD_SPACE)
    storage = tmp_path / "store"
    argv = ["--space", str(space), "--storage-path", str(storage), "--tracking-uri", mlflow_server]
    argv += [a.format(tmp=tmp_path) for a in extra]
    before = _mlflow_state(mlflow_client)
    code, err = _run_main(main, argv, capfd)
    _assert_clean_rejection(case, culprit, code, err)
    assert not storage.exists() or not any(storage.iterdir()), f"{case}: wrote {list(storage.rglob('*'))}"
    _no_mlflow_trace(mlflow_client, before)


# ---- the sweep CLI against what it names: MLflow, storage, data, checkpoint ------------------------
# Each case prepares its hostile input in `tmp` and returns (extra argv, extra environment). All of
# them must be rejected before Ray starts: one line, exit 2, < 20 s, no sweep folder, no experiment.


def _dead_port() -> int:
    from tracking.server import free_port

    return free_port()


def _deleted_experiment(tmp, url):
    from mlflow import MlflowClient

    client = MlflowClient(url)
    client.delete_experiment(client.create_experiment("faults-deleted-exp"))
    return ["--experiment", "faults-deleted-exp"], {}


def _one_scene_root(tmp, url):
    from lora_train.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp / "one", num_scenes=1, seed=0, views_per_scene=4, image_size=(96, 64))
    return ["--data-root", str(tmp / "one")], {}


def _scene_without_calibration(tmp, url):
    from lora_train.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp / "root", num_scenes=3, seed=0, views_per_scene=4, image_size=(96, 64))
    shutil.rmtree(tmp / "root" / "facade_001" / "dslr_calibration_jpg")
    return ["--data-root", str(tmp / "root")], {}


def _garbage_checkpoint(tmp, url):
    (tmp / "model.pt").write_bytes(np.random.default_rng(1).bytes(8192))
    return ["--checkpoint", str(tmp / "model.pt")], {}


def _wrong_checkpoint(tmp, url):
    import torch

    torch.save({"aggregator.camera_token": torch.zeros(1, 2, 1, 8)}, tmp / "model.pt")
    return ["--checkpoint", str(tmp / "model.pt")], {}


def _storage_is_a_file(tmp, url):
    (tmp / "afile").write_text("not a folder")
    return ["--storage-path", str(tmp / "afile" / "sweeps")], {}


def _read_only_storage(tmp, url):
    mount = tmp / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    return ["--storage-path", str(mount / "sweeps")], {"__unmount__": str(mount)}


SWEEP_INPUT_CASES = [  # (case id, culprit the message must name, preparation)
    ("tracking-uri-scheme-typo", "--tracking-uri", lambda tmp, url: (["--tracking-uri", "htp://127.0.0.1:5000"], {})),
    ("tracking-server-dead-flag", "--tracking-uri",
     lambda tmp, url: (["--tracking-uri", f"http://127.0.0.1:{_dead_port()}"], {})),
    ("tracking-server-dead-env", "$MLFLOW_TRACKING_URI",
     lambda tmp, url: ([], {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_dead_port()}"})),
    ("tracking-experiment-deleted", "faults-deleted-exp", _deleted_experiment),
    ("space-width-range-not-multiples", "data.width",
     lambda tmp, url: (["--space", str(_space(tmp, GOOD_SPACE.replace(
         "  lora.rank:", "  data.width: {type: int, low: 56, high: 70}\n  lora.rank:")))], {})),
    ("data-root-no-train-val-split", "val", _one_scene_root),
    ("data-root-scene-without-calibration", "facade_001", _scene_without_calibration),
    ("checkpoint-unreadable", "checkpoint", _garbage_checkpoint),
    ("checkpoint-wrong-keys", "does not match the model", _wrong_checkpoint),
    ("storage-path-is-a-file", "--storage-path", _storage_is_a_file),
    ("storage-path-read-only", "--storage-path", _read_only_storage),
]


def _space(tmp, text):
    path = tmp / "edited-space.yaml"
    path.write_text(text)
    return path


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case,culprit,prepare", SWEEP_INPUT_CASES, ids=[c[0] for c in SWEEP_INPUT_CASES])
def test_bad_sweep_input(case, culprit, prepare, tmp_path, capfd, mlflow_server, mlflow_client, monkeypatch):
    import time

    from sweeps.run import main

    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    space = tmp_path / "space.yaml"
    space.write_text(GOOD_SPACE)
    storage = tmp_path / "store"
    argv = ["--space", str(space), "--storage-path", str(storage), "--tracking-uri", mlflow_server]
    extra, env = prepare(tmp_path, mlflow_server)
    unmount = env.pop("__unmount__", None)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if "MLFLOW_TRACKING_URI" in env:
        argv = argv[:-2]
    argv += extra  # a later flag wins (argparse)
    before = _mlflow_state(mlflow_client)
    started = time.monotonic()
    try:
        code, err = _run_main(main, argv, capfd)
    finally:
        if unmount:
            subprocess.run(["umount", unmount], check=False)
    seconds = time.monotonic() - started
    _assert_clean_rejection(case, culprit, code, err)
    assert seconds < 20, f"{case}: rejected after {seconds:.1f} s"
    for folder in (storage, tmp_path / "afile" / "sweeps"):
        assert not folder.exists() or not any(folder.iterdir()), f"{case}: wrote {list(folder.rglob('*'))}"
    _no_mlflow_trace(mlflow_client, before)


# ---- the Optuna study storage (sweeps/study_storage.py) against a real PostgreSQL server ----------
STUDY_DB, STUDY_USER, STUDY_PASSWORD = "faults_optuna", "faults_optuna", "study-pw-4c1d8e"


def _existing_study(pg) -> str:
    """A study named like the sweep already in the database (a new sweep must not inherit it)."""
    import optuna

    storage = optuna.storages.RDBStorage(pg.url(STUDY_USER, STUDY_DB, STUDY_PASSWORD))
    optuna.create_study(study_name="faults-study-taken", storage=storage, load_if_exists=True)
    storage.engine.dispose()
    return pg.url(STUDY_USER, STUDY_DB)


# (case id, culprit the message must name, --optuna-storage URL from the server, extra argv, PGPASSWORD)
STUDY_STORAGE_CASES = [
    ("optuna-storage-unknown-scheme", "unknown scheme 'mongodb'", lambda pg: "mongodb://127.0.0.1:27017/optuna",
     [], STUDY_PASSWORD),
    ("optuna-storage-password-in-url", "holds a password", lambda pg: pg.url(STUDY_USER, STUDY_DB, "hunter2-pw"),
     [], None),
    ("optuna-storage-unreachable", "Connection refused",
     lambda pg: f"postgresql://{STUDY_USER}@127.0.0.1:{_dead_port()}/{STUDY_DB}", [], STUDY_PASSWORD),
    ("optuna-storage-wrong-password", "password authentication failed", lambda pg: pg.url(STUDY_USER, STUDY_DB),
     [], "not-the-password"),
    ("optuna-storage-study-exists", "already exists", _existing_study, ["--name", "faults-study-taken"],
     STUDY_PASSWORD),
]


@pytest.fixture(scope="module")
def study_server(postgres_server):
    postgres_server.add_user(STUDY_USER, STUDY_PASSWORD, STUDY_DB)
    return postgres_server


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case,culprit,url,extra,password", STUDY_STORAGE_CASES,
                         ids=[c[0] for c in STUDY_STORAGE_CASES])
def test_bad_optuna_storage(case, culprit, url, extra, password, study_server, tmp_path, capfd, mlflow_server,
                            mlflow_client, monkeypatch):
    from sweeps.run import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pgpass
    if password is None:
        monkeypatch.delenv("PGPASSWORD", raising=False)
    else:
        monkeypatch.setenv("PGPASSWORD", password)
    space = tmp_path / "space.yaml"
    space.write_text(GOOD_SPACE)
    storage = tmp_path / "store"
    storage_url = url(study_server)
    studies_before = study_server.sql("SELECT count(*) FROM studies", STUDY_DB) if case.endswith("exists") else None
    before = _mlflow_state(mlflow_client)
    code, err = _run_main(main, ["--space", str(space), "--storage-path", str(storage), "--tracking-uri",
                                 mlflow_server, "--optuna-storage", storage_url, *extra], capfd)
    _assert_clean_rejection(case, culprit, code, err)
    assert "hunter2" not in err and STUDY_PASSWORD not in err, f"{case}: the message shows a password: {err}"
    assert not storage.exists() or not any(storage.iterdir()), f"{case}: wrote {list(storage.rglob('*'))}"
    _no_mlflow_trace(mlflow_client, before)
    tables = study_server.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", STUDY_DB)
    if studies_before is None:
        assert tables == "0", f"{case}: Optuna tables were created"
    else:
        assert study_server.sql("SELECT count(*) FROM studies", STUDY_DB) == studies_before


# ---- the training CLI: config, ETH3D tree, checkpoint ---------------------------------------------

TRAIN_BASE = ["--config", "tiny_demo", "--train.epochs", "1", "--train.steps_per_epoch", "1",
              "--train.progress_bar", "false"]


@pytest.fixture(scope="module")
def eth3d_tree(tmp_path_factory) -> Path:
    from lora_train.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("eth3d")
    write_synthetic_dataset(root, num_scenes=3, seed=0, family="facade", views_per_scene=4,
                            image_size=(126, 84))
    return root


def _first(root: Path, pattern: str) -> Path:
    return sorted(root.rglob(pattern))[0]


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def _break_mask(path: Path):
    import cv2

    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    mask[0, 0] = 7
    cv2.imwrite(str(path), mask)


ETH3D_CASES = [  # (case id, culprit, breakage of a copy of the tree)
    ("eth3d-garbled-cameras", "cameras.txt", lambda r: _first(r, "cameras.txt").write_text("1 PINHOLE wide tall\n")),
    ("eth3d-missing-images-txt", "images.txt", lambda r: _first(r, "images.txt").unlink()),
    ("eth3d-missing-image", "missing", lambda r: _first(r, "*.JPG").unlink() if list(r.rglob("*.JPG")) else _first(r, "*.jpg").unlink()),
    ("eth3d-truncated-depth", "bytes", lambda r: _truncate(sorted(p for p in r.rglob("*") if p.is_file() and "depth" in str(p.parent).lower())[0])),
    ("eth3d-bad-mask-value", "mask", lambda r: _break_mask(sorted(p for p in r.rglob("*.png") if "mask" in str(p).lower())[0])),
]


@pytest.mark.parametrize("case,culprit,breakage", ETH3D_CASES, ids=[c[0] for c in ETH3D_CASES])
def test_bad_eth3d_tree(case, culprit, breakage, eth3d_tree, tmp_path, capfd):
    from lora_train.train import main

    root = tmp_path / "eth3d"
    shutil.copytree(eth3d_tree, root)
    breakage(root)
    out = tmp_path / "out"
    code, err = _run_main(main, [*TRAIN_BASE, "--data.root", str(root), "--output-dir", str(out)], capfd)
    _assert_clean_rejection(case, culprit, code, err)
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


def _write_checkpoint(kind: str, path: Path):
    import torch

    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "wrong-shapes":
        torch.save({"aggregator.patch_embed.proj.weight": torch.zeros(3, 3)}, path)
    elif kind == "not-a-state-dict":
        torch.save([1, 2, 3], path)


CHECKPOINT_CASES = [
    ("checkpoint-garbage-bytes", "checkpoint", "garbage"),
    ("checkpoint-wrong-tensors", "checkpoint", "wrong-shapes"),
    ("checkpoint-not-a-state-dict", "checkpoint", "not-a-state-dict"),
]


@pytest.mark.parametrize("case,culprit,kind", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_bad_checkpoint(case, culprit, kind, tmp_path, capfd):
    from lora_train.train import main

    checkpoint = tmp_path / "model.pt"
    _write_checkpoint(kind, checkpoint)
    out = tmp_path / "out"
    code, err = _run_main(main, [*TRAIN_BASE, "--model.checkpoint", str(checkpoint), "--output-dir", str(out)], capfd)
    _assert_clean_rejection(case, culprit, code, err)
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


TRAIN_CONFIG_CASES = [
    ("config-missing-file", "config not found", ["--config", "{tmp}/missing.yaml"]),
    ("config-unknown-key", "lrr", ["--config", "{tmp}/bad.yaml"]),
    ("config-flag-without-value", "--optim.lr", [*TRAIN_BASE, "--optim.lr"]),
    ("config-negative-epochs", "train.epochs", [*TRAIN_BASE, "--train.epochs", "-3"]),
]


@pytest.mark.parametrize("case,culprit,argv", TRAIN_CONFIG_CASES, ids=[c[0] for c in TRAIN_CONFIG_CASES])
def test_bad_training_config(case, culprit, argv, tmp_path, capfd):
    from lora_train.train import main

    (tmp_path / "bad.yaml").write_text("inherit: tiny_demo\noptim:\n  lrr: 0.1\n")
    out = tmp_path / "out"
    code, err = _run_main(main, [a.format(tmp=tmp_path) for a in argv] + ["--output-dir", str(out)], capfd)
    _assert_clean_rejection(case, culprit, code, err)
    assert not out.exists() or not any(out.rglob("*.safetensors"))


@pytest.mark.timeout(300)
def test_executables_exit_2(tmp_path, repo_root):
    """The real commands, as processes: the exit status of the executable itself."""
    space = tmp_path / "space.yaml"
    space.write_text(GOOD_SPACE.replace("num_samples: 2", "num_samples: 0"))
    for case, culprit, cmd in (
        ("process-sweep-bad-space", "num_samples", [sys.executable, "sweeps/run.py", "--space", str(space),
                                                     "--storage-path", str(tmp_path / "store")]),
        ("process-train-bad-config", "config not found", [sys.executable, "-m", "lora_train.train",
                                                           "--config", str(tmp_path / "none.yaml")]),
    ):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=repo_root)
        _assert_clean_rejection(case, culprit, result.returncode, result.stderr)
    assert not (tmp_path / "store").exists()
