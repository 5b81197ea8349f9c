"""Background loading: worker count, batches independent of the workers, the shared view cache."""

import multiprocessing
import os

import pytest
import torch

from lora_train.config import load_config
from lora_train.data.eth3d import ETH3DScene
from lora_train.data.loading import MAX_AUTO_WORKERS, WindowStream, resolve_num_workers
from lora_train.data.windows import ETH3DWindows
from lora_train.reporting import Reporter
from lora_train.train import run_training

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


@pytest.mark.parametrize("cpus, local_ranks, expected", [(16, 1, MAX_AUTO_WORKERS), (16, 4, 3), (4, 1, 3), (1, 1, 0)])
def test_auto_workers_follow_the_process_cpus(monkeypatch, cpus, local_ranks, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_ranks))
    assert resolve_num_workers("auto", CUDA) == expected
    assert resolve_num_workers("auto", CPU) == 0  # the CPU step already uses every core
    assert resolve_num_workers(3, CPU) == 3


def test_workers_yield_the_same_batches_every_epoch(synthetic_root, data_cache_dir):
    dataset = ETH3DWindows(synthetic_root, split="train", num_views=3, width=70, color_jitter=True,
                           cache_dir=data_cache_dir)
    epochs = {0: [[3, 0], [7, 12]], 1: [[3, 5], [0, 9]]}  # window 3 and 0 again, other companions
    loaded = {}
    for workers in (0, 2):
        rng = torch.get_rng_state()
        stream = WindowStream(dataset, epochs, workers, CPU)
        assert stream.loader.num_workers == workers
        loaded[workers] = list(stream.epoch(0)) + list(stream.epoch(1))
        assert torch.equal(torch.get_rng_state(), rng)  # dropout's stream is untouched (exact resumes)
    assert len(loaded[0]) == len(loaded[2]) == 4
    for a, b in zip(loaded[0], loaded[2]):
        assert a["view_names"] == b["view_names"]
        for key, value in a.items():
            if torch.is_tensor(value):
                assert torch.equal(value, b[key]), key
    # the epoch reached the workers: window 3's jitter differs between the epochs
    assert not torch.equal(loaded[2][0]["images"][0], loaded[2][2]["images"][0])


class _Losses(Reporter):
    def __init__(self):
        self.losses = []

    def on_step(self, step, metrics):
        self.losses.append(metrics["train/loss"])


def test_training_losses_do_not_depend_on_the_worker_count(synthetic_root, data_cache_dir, tmp_path):
    """Two epochs: dropout draws from the global RNG, which the loader (one iteration per run,
    in which workers start once) must leave alone."""
    losses = {}
    for workers in (0, 2):
        config = load_config("default", {
            "model.checkpoint": None, "data.root": str(synthetic_root), "data.cache_dir": str(data_cache_dir),
            "data.num_views": 2, "data.width": 42, "data.color_jitter": True, "data.num_workers": workers,
            "lora.rank": 4, "lora.dropout": 0.1, "train.epochs": 2, "train.steps_per_epoch": 1,
            "train.progress_bar": False, "train.save_checkpoints": False, "eval.every_epochs": 10,
            "eval.max_windows": 1, "eval.num_visualizations": 0, "train.output_dir": str(tmp_path / f"w{workers}"),
        })
        reporter = _Losses()
        assert run_training(config, reporter).status == "completed"
        losses[workers] = reporter.losses
    assert len(losses[0]) == 2 and losses[0][0] != losses[0][1]
    assert losses[2] == losses[0]


def _load_views(scene_args, names, start, calls, results):
    scene = ETH3DScene(*scene_args[:2], cache_dir=scene_args[2])
    resample = scene._resample

    def counted(*args):
        with calls.get_lock():
            calls.value += 1
        return resample(*args)

    scene._resample = counted
    start.wait()
    results.put([scene.load_view(name, width=126)["depth"].tobytes() for name in names])


def test_concurrent_processes_fill_each_cache_entry_once(synthetic_root, tmp_path):
    """Loader workers and trials on one host share the view cache: same answers, one fill per entry."""
    cache = tmp_path / "cache"
    names = ETH3DScene(synthetic_root, "facade_000", cache_dir=False).view_names[:2]
    fresh = [ETH3DScene(synthetic_root, "facade_000", cache_dir=False).load_view(n, width=126)["depth"].tobytes()
             for n in names]
    context = multiprocessing.get_context("fork")
    processes, start, calls, results = 3, context.Barrier(3), context.Value("i", 0), context.Queue()
    workers = [context.Process(target=_load_views, args=((synthetic_root, "facade_000", cache), names, start, calls, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    answers = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert all(answer == fresh for answer in answers)
    assert calls.value == len(names)  # the others waited for the entry and read it
    entries = sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    assert len(entries) == len(names) and all(e.endswith(".bin") for e in entries)  # no temporary files left
    again = ETH3DScene(synthetic_root, "facade_000", cache_dir=cache)
    assert again.load_view(names[0], width=126)["depth"].tobytes() == fresh[0]
