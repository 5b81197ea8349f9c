"""The one on-disk cache of `lora_train`, and the cached synthetic scenes.

Everything `lora_train` builds once and reuses lives under one root, `$VGGT_LORA_CACHE`
(default `~/.cache/vggt-lora/`):

    scenes/   synthetic ETH3D-format scene sets (`ensure_synthetic_scenes`)
    views/    resampled views at training resolution (`ETH3DScene`'s view cache)
    bases/    the tiny pretrained base (`lora_train.tiny_base`)

Entries are keyed by the content that produced them, written under a temporary name and
renamed, and built under a file lock, so concurrent trials never build the same thing twice
and never read half an entry. Deleting the folder is always safe.
"""

import json
import os
from pathlib import Path

from vggt_common.files import atomic_dir, file_lock

CACHE_ENV = "VGGT_LORA_CACHE"
# Bump when the scene writer or the base recipe changes meaning, to invalidate old entries.
ASSET_VERSION = 1


def cache_root() -> Path:
    """`$VGGT_LORA_CACHE`, else `~/.cache/vggt-lora`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vggt-lora").expanduser()


def cache_dir(kind: str, root: str | Path | None = None) -> Path:
    """The sub-folder for `kind` ("scenes", "views" or "bases") of `root` (default `cache_root()`)."""
    if kind not in ("scenes", "views", "bases"):
        raise ValueError(f"unknown cache kind {kind!r}")
    return (Path(root) if root else cache_root()) / kind


def ensure_synthetic_scenes(family: str, num_scenes: int, seed: int = 0, root: str | Path | None = None,
                            **writer_options) -> Path:
    """A folder of `num_scenes` synthetic ETH3D-format scenes of `family`, written once.

    Args:
        family: "facade" or "generic" (see `lora_train.data.synthetic`).
        num_scenes, seed: what to generate.
        root: cache root (default `cache_root()`).
        **writer_options: further `write_synthetic_dataset` options (views_per_scene, image_size).

    Returns:
        The dataset root (`ETH3DWindows(root, ...)` reads it).
    """
    from lora_train.data.synthetic import write_synthetic_dataset

    options = "".join(f"-{k}{'x'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                      for k, v in sorted(writer_options.items()))
    scenes = cache_dir("scenes", root)
    dataset = scenes / f"{family}-n{num_scenes}-seed{seed}{options}-v{ASSET_VERSION}"
    done_marker = dataset / ".complete"
    if done_marker.is_file():
        return dataset
    with file_lock(scenes / f"{dataset.name}.lock"):
        if done_marker.is_file():  # another process finished it while we waited
            return dataset
        with atomic_dir(dataset) as tmp:
            write_synthetic_dataset(tmp, num_scenes, seed=seed, family=family, **writer_options)
            (tmp / ".complete").write_text(json.dumps({"family": family, "num_scenes": num_scenes, "seed": seed}))
    return dataset
