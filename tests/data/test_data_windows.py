"""Multi-view windows: covisible views, scene-level split, RMVD keyviews, batch layout."""

import pytest
import torch
from torch.utils.data import DataLoader

from lora_train.data.synthetic import generate_scene, write_scene
from lora_train.data.windows import (
    RMVD_SPLIT_FILE,
    ETH3DWindows,
    collate_windows,
    covisibility,
    read_rmvd_split,
    split_scenes,
)

ETH3D_SCENES = ["courtyard", "delivery_area", "electro", "facade", "kicker", "meadow", "office", "pipes",
                "playground", "relief", "relief_2", "terrace", "terrains"]
WIDTH = 126


@pytest.fixture(scope="module")
def train_windows(synthetic_root, data_cache_dir):
    return ETH3DWindows(synthetic_root, split="train", num_views=4, width=WIDTH, cache_dir=data_cache_dir)


def test_rmvd_split_is_shipped_verbatim(fixtures_dir):
    assert RMVD_SPLIT_FILE.read_bytes() == (fixtures_dir / "eth3d" / "rmvd_eth3d_split.txt").read_bytes()
    split = read_rmvd_split()
    assert sorted(split) == ETH3D_SCENES
    assert all(len(entries) == 8 and all(len(src) == 10 for _, src in entries) for entries in split.values())
    assert split["courtyard"][0] == ("0286", "0287 0288 0318 0289 0311 0312 0317 0323 0313 0319".split())


@pytest.mark.parametrize("scenes", [ETH3D_SCENES, [f"facade_{i:03d}" for i in range(7)]])
def test_scene_split_is_disjoint_stable_and_never_empty(scenes):
    train, val = split_scenes(scenes)
    assert set(train) | set(val) == set(scenes) and not set(train) & set(val)
    assert train and val
    assert split_scenes(list(reversed(scenes))) == (sorted(train, key=scenes[::-1].index), sorted(val, key=scenes[::-1].index))
    grown_train, grown_val = split_scenes(scenes + ["zzz_new_scene"])
    assert set(val) <= set(grown_val) | {"zzz_new_scene"} and set(train) <= set(grown_train)
    assert split_scenes(scenes, val_scenes=[scenes[0]]) == (scenes[1:], scenes[:1])


def test_train_and_val_never_share_a_scene(synthetic_root, train_windows, data_cache_dir):
    val = ETH3DWindows(synthetic_root, split="val", num_views=4, width=WIDTH, cache_dir=data_cache_dir)
    assert set(train_windows.scenes).isdisjoint(val.scenes)
    assert set(train_windows.scenes) | set(val.scenes) == {"facade_000", "facade_001", "facade_002"}
    assert train_windows.height == val.height
    assert len(train_windows) == 8 * len(train_windows.scenes)
    keyviews = [val.window_views(i)[1][0] for i in range(len(val))]
    assert len(keyviews) == len(set(keyviews)) == 8  # evenly spaced keyviews of the val scene


def test_window_layout_and_geometry(train_windows):
    window = train_windows[3]
    s, h, w = 4, train_windows.height, WIDTH
    assert window["images"].shape == (s, 3, h, w) and window["images"].dtype == torch.float32
    assert 0 <= window["images"].min() and window["images"].max() <= 1
    assert window["depths"].shape == (s, h, w) and window["extrinsics"].shape == (s, 3, 4)
    assert window["intrinsics"].shape == (s, 3, 3) and window["point_masks"].dtype == torch.bool
    assert window["world_points"].shape == window["cam_points"].shape == (s, h, w, 3)
    assert torch.equal(window["point_masks"], window["depths"] > 0)
    assert torch.equal(window["cam_points"][..., 2], window["depths"])
    assert window["point_masks"].float().mean() > 0.5
    assert isinstance(window["scene"], str) and len(window["view_names"]) == s == len(set(window["view_names"]))

    # covisible: every companion shares SfM points with the anchor
    scene = train_windows.scenes[window["scene"]]
    covis = covisibility(scene)
    index = [scene.view_names.index(n) for n in window["view_names"]]
    assert all(covis[index[0], j] > 0 for j in index[1:])

    # geometric consistency: view 0's points, seen from the other views, land at their depth
    points = window["world_points"][0][window["point_masks"][0]]
    agree = total = 0
    for v in range(1, s):
        e, k = window["extrinsics"][v], window["intrinsics"][v]
        cam = points @ e[:, :3].T + e[:, 3]
        uv = cam @ k.T
        u, vv = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
        inside = (cam[:, 2] > 0) & (u > 0) & (u < w - 1) & (vv > 0) & (vv < h - 1)
        d = window["depths"][v][vv[inside].round().long(), u[inside].round().long()]
        seen = d > 0
        total += int(seen.sum())
        agree += int((torch.abs(d[seen] - cam[inside][seen, 2]) < 0.03 * d[seen]).sum())
    assert total > 1000 and agree > 0.8 * total  # the rest: occlusions and edges


def test_train_sampling_is_seeded_per_epoch(synthetic_root, train_windows, data_cache_dir):
    twin = ETH3DWindows(synthetic_root, split="train", num_views=4, width=WIDTH, cache_dir=data_cache_dir)
    views = [train_windows.window_views(i) for i in range(len(train_windows))]
    assert views == [twin.window_views(i) for i in range(len(twin))]
    assert all(names[0] == train_windows.scenes[scene].view_names[i % 8] for i, (scene, names) in enumerate(views))
    twin.set_epoch(1)
    assert views != [twin.window_views(i) for i in range(len(twin))]


def test_color_jitter_is_seeded_and_leaves_geometry(synthetic_root, train_windows, data_cache_dir):
    jittered = ETH3DWindows(synthetic_root, split="train", num_views=4, width=WIDTH, color_jitter=True, cache_dir=data_cache_dir)
    a, b, plain = jittered[2], jittered[2], train_windows[2]
    assert torch.equal(a["images"], b["images"])
    assert (a["images"] - plain["images"]).abs().mean() > 0.01
    assert 0 <= a["images"].min() and a["images"].max() <= 1
    assert torch.equal(a["depths"], plain["depths"]) and torch.equal(a["world_points"], plain["world_points"])


def test_collate_and_dataloader(train_windows):
    batch = next(iter(DataLoader(train_windows, batch_size=2, collate_fn=collate_windows)))
    assert batch["images"].shape == (2, 4, 3, train_windows.height, WIDTH)
    assert batch["extrinsics"].shape == (2, 4, 3, 4) and len(batch["scene"]) == 2
    assert len(batch["view_names"]) == 2 and len(batch["view_names"][0]) == 4
    odd = dict(train_windows[0], depths=torch.zeros(4, 14, 14))
    with pytest.raises(ValueError, match="depths"):
        collate_windows([train_windows[0], odd])


def test_rmvd_keyviews_define_val_windows_of_real_scene_names(tmp_path):
    scene = generate_scene("facade", 5, seed=3, num_views=12, image_size=(96, 64))
    scene.name = "courtyard"
    scene.view_names = [f"DSC_{n:04d}.JPG" for n in range(286, 298)]
    write_scene(scene, tmp_path)
    val = ETH3DWindows(tmp_path, split="val", num_views=4, width=56, val_scenes=["courtyard"], cache_dir=False)
    windows = [val.window_views(i)[1] for i in range(len(val))]
    stems = [[n.split("DSC_")[1][:4] for n in names] for names in windows]
    # keyviews 0286, 0290, 0295 are present; sources keep RMVD's order, absent ones are skipped
    assert stems == [["0286", "0287", "0288", "0289"], ["0290", "0289", "0292", "0291"], ["0295", "0294", "0293", "0296"]]
    assert val[0]["images"].shape[:2] == (4, 3)
