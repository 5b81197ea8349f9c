"""Background loading of training windows, so that a training step never waits on the next batch.

`WindowStream` is a run's one training loader: a single DataLoader iteration over every remaining
epoch, whose workers load windows while the accelerator steps and keep loading across an epoch's
end (the next epoch's first batches are ready when validation is over). Every index carries its
epoch, so a window's views and jitter stay a function of (seed, epoch, index) alone: any worker
count yields the same batches in the same order. The loader seeds its workers from its own
generator, never from the global RNG that dropout draws from, so a resumed run continues that
stream exactly.
"""

import itertools
import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lora_train.data.windows import collate_windows

MAX_AUTO_WORKERS = 8
PREFETCH_BATCHES = 2  # per worker: up to 2 x workers batches wait ready (~57 MB each at 8 views x 518)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), shared with the node's other ranks."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def resolve_num_workers(setting: int | str, device: torch.device) -> int:
    """`data.num_workers` as a count. "auto": on CUDA one worker per CPU of this process beyond the
    one the training loop needs, at most `MAX_AUTO_WORKERS`; 0 on CPU, where the step itself
    computes on every core a worker would take."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    return min(MAX_AUTO_WORKERS, available_cpus() - 1)


class RunBatches(Sampler):
    """Batch sampler over several epochs' micro-batches, in order, as lists of (epoch, window index).

    Args:
        epochs: {epoch: [[window index, ...] per micro-batch]}.
    """

    def __init__(self, epochs: dict[int, list[list[int]]]):
        self.epochs = epochs

    def __iter__(self):
        return iter([[(epoch, index) for index in batch] for epoch, batches in self.epochs.items() for batch in batches])

    def __len__(self) -> int:
        return sum(len(batches) for batches in self.epochs.values())


class WindowStream:
    """The training batches of a run, loaded by `num_workers` (or "auto") background workers.

    Args:
        dataset: indexable by (epoch, window index), e.g. `ETH3DWindows`.
        epochs: {epoch: micro-batches of window indices} for every epoch still to train, in order.
        num_workers: a count or "auto" (`resolve_num_workers`).
        device: the training device; batches are pinned for an asynchronous copy on CUDA.

    Workers start at once and end with the stream (or when its last batch has been taken).
    """

    def __init__(self, dataset: Dataset, epochs: dict[int, list[list[int]]], num_workers: int | str,
                 device: torch.device):
        workers = resolve_num_workers(num_workers, device)
        self.sizes = {epoch: len(batches) for epoch, batches in epochs.items()}
        self.loader = DataLoader(
            dataset,
            batch_sampler=RunBatches(epochs),
            collate_fn=collate_windows,
            num_workers=workers,
            prefetch_factor=PREFETCH_BATCHES if workers else None,
            pin_memory=device.type == "cuda",
            generator=torch.Generator(),
        )
        self._batches = iter(self.loader)

    def epoch(self, epoch: int) -> Iterator[dict]:
        """The batches of `epoch` (take the epochs in order)."""
        return itertools.islice(self._batches, self.sizes[epoch])
