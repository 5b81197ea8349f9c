"""Windows/s of ETH3DWindows (S=8, width 518) and the data stall of a training loop fed by it.

The scene has ETH3D's real sizes: 6048x4032 distorted JPEGs and 93 MiB raw float32 depth maps.
It is ray cast at 1/`--upscale` of that size by the synthetic generator and upsampled in place
(images bicubic, depth and masks nearest; intrinsics scaled), because ray casting 24 MP views in
numpy would take minutes; the loader cannot tell the difference, which is all a throughput
benchmark needs.

Modes, measured in one run on the same files:
- naive:  no cache, every JPEG decoded at full resolution, every depth map read in full.
- cold:   first pass of the cached loader (reduced-scale JPEG decode, full depth read, cache write).
- cached: later passes (reads ~1.4 MB per view from the cache).

Then the training loop: the run's own loader (`lora_train.data.loading.WindowStream`, batch 1,
the epoch order of `lora_train.train`) with no workers and with `data.num_workers: auto` as on a
GPU host, each step a fixed sleep standing in for the GPU step (default 167 ms: VGGT-1B strategy
A at 8 views x 518 on an H200, the fastest step in the README). Stall share = time spent waiting
for the next batch / loop time, with worker start-up and the run's first batch included; "steady"
leaves out that first wait (once per run: start-up and one window). Cold = one epoch on an empty
view cache (the source files are in the OS page cache, as after a first read); cached =
`--cached-epochs` epochs on the filled cache.

    python benchmarks/bench_data_windows.py [--data-dir DIR] [--views 10] [--upscale 4] [--step-ms 167]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from lora_train.data.colmap import Camera, read_cameras, write_cameras
from lora_train.data.loading import WindowStream, resolve_num_workers
from lora_train.data.synthetic import write_synthetic_dataset
from lora_train.data.windows import ETH3DWindows
from lora_train.runtime import DistInfo
from lora_train.train import epoch_batches

FULL_SIZE = (6048, 4032)
SCENE = "facade_000"


def _scale_camera(camera: Camera, factor: int) -> Camera:
    params = list(camera.params)
    params[:4] = [p * factor for p in params[:4]]  # COLMAP pixel convention scales linearly
    return Camera(camera.camera_id, camera.model, camera.width * factor, camera.height * factor, tuple(params))


def make_full_resolution_scene(root: Path, views: int, upscale: int) -> Path:
    """Write one facade scene at ETH3D's full resolution under `root` (reused when present)."""
    scene = root / SCENE
    marker = scene / ".full_resolution"
    if marker.is_file():
        return scene
    small = (FULL_SIZE[0] // upscale, FULL_SIZE[1] // upscale)
    print(f"generating {views} views at {small[0]}x{small[1]}, upsampling x{upscale} to {FULL_SIZE[0]}x{FULL_SIZE[1]} ...")
    write_synthetic_dataset(root, 1, seed=0, family="facade", views_per_scene=views, image_size=small, progress=True)
    for folder in ("dslr_calibration_jpg", "dslr_calibration_undistorted"):
        path = scene / folder / "cameras.txt"
        write_cameras(path, [_scale_camera(c, upscale) for c in read_cameras(path).values()])
    for jpg in sorted((scene / "images").rglob("*.JPG")):
        image = cv2.imread(str(jpg))
        image = cv2.resize(image, (image.shape[1] * upscale, image.shape[0] * upscale), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(jpg), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    for depth_file in sorted((scene / "ground_truth_depth").rglob("*.JPG")):
        depth = np.fromfile(depth_file, "<f4").reshape(small[1], small[0])
        np.repeat(np.repeat(depth, upscale, 0), upscale, 1).astype("<f4").tofile(depth_file)
    for mask_file in sorted((scene / "masks_for_images").rglob("*.png")):
        mask = cv2.imread(str(mask_file), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(mask_file), np.repeat(np.repeat(mask, upscale, 0), upscale, 1))
    marker.write_text("upsampled\n")
    return scene


def time_windows(dataset: ETH3DWindows, indices: list[int]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) per window over `indices`."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in indices:
        window = dataset[i]
        assert window["images"].shape[0] == dataset.num_views
    n = len(indices)
    return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def loop_stall(dataset: ETH3DWindows, workers: int, step_s: float, epochs: int) -> tuple[float, float, float, float]:
    """A training loop of `epochs` epochs whose steps sleep `step_s`, fed like `lora_train.train`.

    Returns (stall share, stall share after the run's first batch, mean wait s per step, wall s).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # pinned memory where real
    n = len(dataset)
    start = time.perf_counter()
    stream = WindowStream(dataset, {e: epoch_batches(n, e, 0, 1, DistInfo(), n) for e in range(epochs)}, workers, device)
    waits = []
    asked = start  # worker start-up counts as waiting
    for epoch in range(epochs):
        for batch in stream.epoch(epoch):
            waits.append(time.perf_counter() - asked)
            assert batch["images"].shape[1] == dataset.num_views
            del batch  # the step copies the batch to the GPU and drops the host copy
            time.sleep(step_s)
            asked = time.perf_counter()
    wall = time.perf_counter() - start
    del stream  # its workers end here
    steady = sum(waits[1:]) / (wall - waits[0])
    return sum(waits) / wall, steady, sum(waits) / len(waits), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="where to put (or reuse) the full-resolution scene; default a temp dir")
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--upscale", type=int, default=4)
    parser.add_argument("--naive-windows", type=int, default=2, help="windows timed in naive mode (slow)")
    parser.add_argument("--cached-passes", type=int, default=3)
    parser.add_argument("--step-ms", type=float, default=167.0, help="simulated GPU step per window")
    parser.add_argument("--cached-epochs", type=int, default=3, help="epochs of the cached stall loop")
    args = parser.parse_args()
    torch.set_num_threads(1)  # like a DataLoader worker

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_dir) if args.data_dir else Path(tmp) / "data"
        scene = make_full_resolution_scene(root, args.views, args.upscale)
        depth_file = next((scene / "ground_truth_depth" / "dslr_images").iterdir())
        print(f"scene: {scene} ({args.views} views, depth file {depth_file.stat().st_size / 2**20:.1f} MiB each)")
        common = dict(scenes=[SCENE], val_scenes=[], split="train", num_views=8, width=518)

        naive = ETH3DWindows(root, cache_dir=False, fast_decode=False, **common)
        n_wall, n_cpu = time_windows(naive, list(range(args.naive_windows)))

        cached = ETH3DWindows(root, cache_dir=Path(tmp) / "cache", **common)
        every = list(range(len(cached)))
        # first pass: each view resampled once and written to the cache
        c0_wall, c0_cpu = time_windows(cached, every)
        c_wall, c_cpu = time_windows(cached, every * args.cached_passes)

        auto = resolve_num_workers("auto", torch.device("cuda"))  # what a GPU run on this host gets
        stalls = []
        for workers in sorted({0, auto}):
            cold = ETH3DWindows(root, cache_dir=Path(tmp) / f"cold-{workers}", **common)
            stalls.append(("cold", workers, 1, *loop_stall(cold, workers, args.step_ms / 1000, 1)))
            stalls.append(("cached", workers, args.cached_epochs,
                           *loop_stall(cached, workers, args.step_ms / 1000, args.cached_epochs)))

    print()
    print(f"S=8 windows at width 518 (height {cached.height}); one process, torch threads 1")
    print(f"{'mode':<42}{'windows/s':>10}{'s/window':>10}{'cpu s/window':>14}")
    rows = [("naive (full-res decode, no cache)", n_wall, n_cpu),
            ("cold (first pass, fills the cache)", c0_wall, c0_cpu),
            ("cached", c_wall, c_cpu)]
    for name, wall, cpu in rows:
        print(f"{name:<42}{1 / wall:>10.2f}{wall:>10.3f}{cpu:>14.3f}")
    print(f"cached / naive speed-up: {n_wall / c_wall:.1f}x wall-clock, {n_cpu / c_cpu:.1f}x CPU time")
    print(f"cached throughput: {1 / c_wall:.1f} windows/s wall-clock, {1 / c_cpu:.1f} windows/s per CPU core")
    print()
    print(f"training loop, {len(every)} windows per epoch, simulated GPU step {args.step_ms:.0f} ms, "
          f"{len(os.sched_getaffinity(0))} CPUs (num_workers auto = {auto}); goal: stall <= 5 % cached")
    print(f"{'cache':<8}{'workers':>8}{'epochs':>8}{'stall share':>13}{'steady':>9}{'wait/step s':>13}{'steps/s':>9}")
    for cache, workers, epochs, share, steady, wait, wall in stalls:
        print(f"{cache:<8}{workers:>8}{epochs:>8}{share:>12.1%}{steady:>8.1%}{wait:>13.3f}{epochs * len(every) / wall:>9.2f}")


if __name__ == "__main__":
    main()
