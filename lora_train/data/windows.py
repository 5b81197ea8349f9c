"""Multi-view windows over ETH3D scenes: covisible view selection, scene-level split, batches.

A window is S views of one scene, chosen by covisibility (SfM points shared in the jpg model's
POINTS2D tracks; camera-pose proximity when a model has no tracks). Train and val never share a
scene. Validation windows of real ETH3D scenes are the RMVD benchmark's keyviews with their source
views (`rmvd_eth3d_split.txt`); other scenes get evenly spaced keyviews with their most covisible
views. Training windows are anchored at every view of the train scenes, with companions drawn
(seeded) from the anchor's most covisible views.
"""

import functools
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from lora_train.data.eth3d import ETH3DScene
from lora_train.errors import UserError

RMVD_SPLIT_FILE = Path(__file__).with_name("rmvd_eth3d_split.txt")


def read_rmvd_split(path=RMVD_SPLIT_FILE) -> dict[str, list[tuple[str, list[str]]]]:
    """`scene keyview -> sources...` lines → {scene: [(keyview number, [source numbers])]}."""
    split: dict[str, list[tuple[str, list[str]]]] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        left, arrow, right = line.partition("->")
        head = left.split()
        if not arrow or len(head) != 2:
            raise UserError(f"{path}:{lineno}: expected 'scene keyview -> source views'")
        split.setdefault(head[0], []).append((head[1], right.split()))
    return split


def _view_number(name: str) -> str | None:
    match = re.search(r"(\d+)$", Path(name).stem)
    return match.group(1) if match else None


def covisibility(scene: ETH3DScene) -> np.ndarray:
    """[N, N] covisibility scores of `scene.view_names`: shared SfM points, or pose proximity.

    Without any shared points (a model without tracks) the score is
    `max(0, cos(angle between optical axes)) / (1 + distance / median distance)`.
    """
    images = [scene.images[n] for n in scene.view_names]
    n = len(images)
    point_sets = [set(int(p) for p in im.point3d_ids if p >= 0) for im in images]
    scores = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            scores[i, j] = scores[j, i] = len(point_sets[i] & point_sets[j])
    if scores.max() > 0:
        return scores
    centers = np.stack([im.center() for im in images])
    axes = np.stack([im.rotation()[2] for im in images])
    dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    scale = np.median(dist[dist > 0]) if (dist > 0).any() else 1.0
    scores = np.maximum(axes @ axes.T, 0) / (1 + dist / scale)
    np.fill_diagonal(scores, 0)
    return scores


def split_scenes(scenes: list[str], val_scenes=None, val_fraction: float = 0.25) -> tuple[list[str], list[str]]:
    """Scene-level train/val split: `val_scenes` if given, else a stable hash-based fraction.

    A scene is val when sha1(name) falls below `val_fraction`, so adding scenes never moves
    others; with >= 2 scenes there is always at least one val and one train scene.
    """
    if val_scenes is not None:
        unknown = sorted(set(val_scenes) - set(scenes))
        if unknown:
            raise UserError(f"val_scenes {unknown} are not among the scenes {scenes}")
        val = [s for s in scenes if s in set(val_scenes)]
        return [s for s in scenes if s not in set(val)], val
    keys = {s: int(hashlib.sha1(s.encode()).hexdigest()[:8], 16) / 2**32 for s in scenes}
    val = [s for s in scenes if keys[s] < val_fraction]
    if len(scenes) >= 2 and not val:
        val = [min(scenes, key=keys.get)]
    if len(scenes) >= 2 and len(val) == len(scenes):
        val.remove(max(val, key=keys.get))
    return [s for s in scenes if s not in val], val


SCENE_PARTS = ("images", "ground_truth_depth", "masks_for_images", "dslr_calibration_jpg")


def discover_scenes(root) -> list[str]:
    """Scene folders under `root`, sorted: every folder holding a part of an ETH3D scene.

    A folder with some parts but no `dslr_calibration_jpg/` is an error naming it, not a
    silently skipped scene.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset root {root} does not exist")
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and any((p / part).exists() for part in SCENE_PARTS))
    for folder in candidates:
        if not (folder / "dslr_calibration_jpg").is_dir():
            raise UserError(f"scene {folder} has no dslr_calibration_jpg/ (cameras.txt, images.txt): "
                            "extract the scene's calibration archive there or remove the folder")
    if not candidates:
        raise UserError(f"no ETH3D scenes (folders with dslr_calibration_jpg/) under {root}")
    return [p.name for p in candidates]


class ETH3DWindows(Dataset):
    """Windows of `num_views` views from ETH3D-format scenes, as dicts of tensors.

    Args:
        root: dataset root (`<root>/<scene>/...`).
        scenes: scene names (default: every scene under root, or under `calibration_root`).
        split: "train" or "val" (scene-level; see `split_scenes`).
        num_views: S, views per window.
        width: output width (multiple of 14); height: common output height, default the largest
            multiple of 14 that every scene's cameras allow.
        seed: seeds companion sampling and colour jitter (with the epoch, see `set_epoch`).
        color_jitter: brightness/contrast/saturation jitter shared across a window's views.
        val_scenes, val_fraction: the scene split.
        max_windows: keep this many windows, a subset drawn with `seed` (validation protocols
            that score fewer windows than the scenes give); None keeps all.
        keyviews_per_scene: validation keyviews of scenes outside the RMVD list.
        use_rmvd: use the RMVD keyviews for real ETH3D scene names.
        **scene_kwargs: forwarded to `ETH3DScene` (images_root, depth_root, masks_root,
            calibration_root, exclude_obs_mask, image_source, cache_dir, fast_decode).

    Each item: `images [S,3,H,W]` float32 in [0,1], `depths [S,H,W]` float32 (0 = invalid),
    `extrinsics [S,3,4]` float32 camera-from-world, `intrinsics [S,3,3]` float32,
    `point_masks [S,H,W]` bool, `world_points` and `cam_points [S,H,W,3]` float32,
    `scene` str, `view_names` list[str].
    """

    def __init__(self, root, scenes=None, split: str = "train", num_views: int = 8, width: int = 518,
                 height: int | None = None, seed: int = 0, color_jitter: bool = False, val_scenes=None,
                 val_fraction: float = 0.25, keyviews_per_scene: int = 8, use_rmvd: bool = True,
                 max_windows: int | None = None, cache_dir=None, **scene_kwargs):
        if split not in ("train", "val"):
            raise UserError(f"split must be 'train' or 'val', got {split!r}")
        if num_views < 1:
            raise UserError(f"num_views must be >= 1, got {num_views}")
        all_scenes = list(scenes) if scenes is not None else discover_scenes(scene_kwargs.get("calibration_root") or root)
        train, val = split_scenes(all_scenes, val_scenes, val_fraction)
        chosen = train if split == "train" else val
        if not chosen:
            raise UserError(f"no {split} scenes among {all_scenes} (set val_scenes or add scenes)")
        self.split, self.num_views, self.width, self.seed = split, num_views, width, seed
        self.color_jitter = color_jitter
        self.epoch = 0
        self.scenes = {s: ETH3DScene(root, s, cache_dir=cache_dir, **scene_kwargs) for s in chosen}
        for s, scene in self.scenes.items():
            if len(scene.view_names) < num_views:
                raise UserError(f"scene {s} has {len(scene.view_names)} views, fewer than num_views={num_views}")
        if height is None:
            others = [ETH3DScene(root, s, cache_dir=False, **scene_kwargs) for s in all_scenes if s not in self.scenes]
            height = min(sc.default_height(width) for sc in [*self.scenes.values(), *others])
        self.height = height
        self._covis = {s: covisibility(scene) for s, scene in self.scenes.items()}
        rmvd = read_rmvd_split() if use_rmvd else {}
        # windows: (scene, anchor index, fixed companion indices or None for sampled)
        self.windows: list[tuple[str, int, list[int] | None]] = []
        for s, scene in self.scenes.items():
            if split == "train":
                self.windows += [(s, i, None) for i in range(len(scene.view_names))]
            elif s in rmvd:
                self.windows += self._rmvd_windows(s, rmvd[s])
            else:
                n = len(scene.view_names)
                anchors = np.unique(np.linspace(0, n - 1, min(keyviews_per_scene, n)).round().astype(int))
                self.windows += [(s, int(a), self._most_covisible(s, int(a), [])) for a in anchors]
        if max_windows is not None and max_windows < len(self.windows):
            keep = np.random.default_rng([seed, len(self.windows)]).choice(len(self.windows), max_windows, replace=False)
            self.windows = [self.windows[i] for i in sorted(keep)]

    def _most_covisible(self, scene: str, anchor: int, chosen: list[int]) -> list[int]:
        """Extend `chosen` companions of `anchor` to S-1 with the most covisible remaining views."""
        order = [int(j) for j in np.argsort(-self._covis[scene][anchor], kind="stable") if j != anchor]
        extra = [j for j in order if j not in chosen]
        return (chosen + extra)[: self.num_views - 1]

    def _rmvd_windows(self, scene: str, entries) -> list:
        by_number = {_view_number(n): i for i, n in enumerate(self.scenes[scene].view_names)}
        windows = []
        for key, sources in entries:
            if key not in by_number:
                continue
            chosen = [by_number[s] for s in sources if s in by_number and by_number[s] != by_number[key]]
            windows.append((scene, by_number[key], self._most_covisible(scene, by_number[key], chosen[: self.num_views - 1])))
        return windows

    def describe(self) -> dict:
        """The window list and its content hash (fixed windows only, i.e. validation windows).

        Returns:
            `{"num_windows", "num_views", "width", "height", "windows": [[scene, [views...]]...],
            "windows_hash"}`; the hash (sha256, 16 hex digits) covers the scene, key view and
            companion views of every window, in order, and the image size. Equal hashes mean the
            same windows were scored.
        """
        if any(companions is None for _, _, companions in self.windows):
            raise ValueError("describe() needs fixed windows (a validation split); training companions are sampled")
        windows = [list(self.window_views(i)) for i in range(len(self))]
        content = json.dumps({"windows": windows, "width": self.width, "height": self.height})
        return {
            "num_windows": len(windows), "num_views": self.num_views, "width": self.width, "height": self.height,
            "windows": windows, "windows_hash": hashlib.sha256(content.encode()).hexdigest()[:16],
        }

    def set_epoch(self, epoch: int) -> None:
        """Vary companion sampling and jitter per epoch (deterministic given seed and epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.windows)

    def window_views(self, index: int, epoch: int | None = None) -> tuple[str, list[str]]:
        """(scene, view names) of window `index` at `epoch` (default the current one); the
        anchor/keyview comes first."""
        scene, anchor, companions = self.windows[index]
        if companions is None:
            rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, index])
            pool = [int(j) for j in np.argsort(-self._covis[scene][anchor], kind="stable") if j != anchor]
            pool = pool[: max(2 * (self.num_views - 1), self.num_views - 1)]
            companions = sorted(rng.choice(pool, size=self.num_views - 1, replace=False).tolist(),
                                key=lambda j: -self._covis[scene][anchor][j])
        names = self.scenes[scene].view_names
        return scene, [names[anchor]] + [names[j] for j in companions]

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        """Window `index` at the current epoch, or `(epoch, index)`: what `RunBatches` hands the
        loader workers, whose copies of the dataset never see `set_epoch`."""
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        scene_name, names = self.window_views(index, epoch)
        scene = self.scenes[scene_name]
        views = [scene.load_view(n, self.width, self.height) for n in names]
        images = torch.empty(len(views), 3, *views[0]["depth"].shape)
        for i, v in enumerate(views):
            torch.div(torch.from_numpy(v["image"]).permute(2, 0, 1), 255.0, out=images[i])
        depths = torch.from_numpy(np.stack([v["depth"] for v in views]))
        extrinsics = torch.from_numpy(np.stack([v["extrinsics"] for v in views])).float()
        intrinsics = torch.from_numpy(np.stack([v["intrinsics"] for v in views])).float()
        point_masks = torch.from_numpy(np.stack([v["valid"] for v in views])) & (depths > 1e-8)
        cam_points = depth_to_cam_points(depths, intrinsics)
        world_points = cam_to_world_points(cam_points, extrinsics)
        if self.color_jitter:
            images = jitter_colors(images, np.random.default_rng([self.seed, epoch, index, 1]))
        return {
            "images": images,
            "depths": depths,
            "extrinsics": extrinsics,
            "intrinsics": intrinsics,
            "point_masks": point_masks,
            "world_points": world_points,
            "cam_points": cam_points,
            "scene": scene_name,
            "view_names": names,
        }


@functools.lru_cache(maxsize=64)
def _pixel_rays(h: int, w: int, fx: float, fy: float, cx: float, cy: float) -> torch.Tensor:
    """[H, W, 3] rays ((u − cx)/fx, (v − cy)/fy, 1) of an OpenCV camera; cached (few cameras)."""
    u = (torch.arange(w, dtype=torch.float32) - cx) / fx
    v = (torch.arange(h, dtype=torch.float32) - cy) / fy
    return torch.stack([u[None, :].expand(h, w), v[:, None].expand(h, w), torch.ones(h, w)], dim=-1)


def depth_to_cam_points(depths: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """z-depth [S,H,W] and OpenCV intrinsics [S,3,3] → camera-frame points [S,H,W,3]."""
    s, h, w = depths.shape
    out = torch.empty(s, h, w, 3)
    for i, k in enumerate(intrinsics.tolist()):
        torch.mul(_pixel_rays(h, w, k[0][0], k[1][1], k[0][2], k[1][2]), depths[i, ..., None], out=out[i])
    return out


def cam_to_world_points(cam_points: torch.Tensor, extrinsics: torch.Tensor) -> torch.Tensor:
    """Camera-frame points [S,H,W,3] and camera-from-world [S,3,4] → world points [S,H,W,3]."""
    s, h, w, _ = cam_points.shape
    rotation, translation = extrinsics[:, :, :3], extrinsics[:, :, 3:]
    center = -(rotation.transpose(1, 2) @ translation).transpose(1, 2)  # [S, 1, 3] = (−Rᵀ t)ᵀ
    return (cam_points.reshape(s, h * w, 3) @ rotation).add_(center).reshape(s, h, w, 3)  # Rᵀ (p − t)


def jitter_colors(images: torch.Tensor, rng: np.random.Generator, strength: float = 0.3) -> torch.Tensor:
    """Brightness, contrast, saturation jitter: one draw per window plus small per-view changes.

    images: [S, 3, H, W] in [0, 1] → same shape, clamped to [0, 1].
    """
    s = images.shape[0]
    shared = rng.uniform(1 - strength, 1 + strength, size=3)
    per_view = shared[None] * rng.uniform(1 - strength / 4, 1 + strength / 4, size=(s, 3))
    factors = torch.from_numpy(per_view).float()
    out = images * factors[:, 0, None, None, None]
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * factors[:, 1, None, None, None] + mean
    gray = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2])[:, None]
    out = (out - gray) * factors[:, 2, None, None, None] + gray
    return out.clamp(0.0, 1.0)


def collate_windows(windows: list[dict]) -> dict:
    """Stack windows into a batch: tensors get a leading B; `scene` and `view_names` become lists."""
    if not windows:
        raise ValueError("collate_windows needs at least one window")
    batch = {}
    for key, value in windows[0].items():
        if torch.is_tensor(value):
            shapes = {tuple(w[key].shape) for w in windows}
            if len(shapes) > 1:
                raise ValueError(f"cannot batch windows with different {key} shapes {sorted(shapes)}")
            batch[key] = default_collate([w[key] for w in windows])  # in a loader worker: into shared memory
        else:
            batch[key] = [w[key] for w in windows]
    return batch
