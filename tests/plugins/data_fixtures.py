"""Session fixtures with synthetic ETH3D-format data, shared by every test area.

- `synthetic_root`: 3 small facade scenes (`facade_000..002`, 8 views of 384x256 each) in ETH3D's
  merged tree; read-only by convention (copy a scene before damaging it).
- `synthetic_generic_root`: 2 generic scenes (`generic_000..001`, 6 views of 256x172).
- `data_cache_dir`: an on-disk view cache for `ETH3DScene`/`ETH3DWindows(cache_dir=...)`.
"""

import pytest

from lora_train.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eth3d_facade")
    write_synthetic_dataset(root, num_scenes=3, seed=0, family="facade", views_per_scene=8)
    return root


@pytest.fixture(scope="session")
def synthetic_generic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eth3d_generic")
    write_synthetic_dataset(root, num_scenes=2, seed=0, family="generic", views_per_scene=6, image_size=(256, 172))
    return root


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("eth3d_cache")
