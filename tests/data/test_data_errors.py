"""Broken ETH3D trees: each mistake is a one-line UserError that names the culprit file."""

import shutil

import cv2
import numpy as np
import pytest

from lora_train.data.eth3d import ETH3DScene
from lora_train.data.windows import ETH3DWindows
from lora_train.errors import UserError


@pytest.fixture
def scene_copy(synthetic_root, tmp_path):
    shutil.copytree(synthetic_root / "facade_000", tmp_path / "facade_000")
    return tmp_path


def _error(fn) -> str:
    with pytest.raises(UserError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message
    return message


def _first_view(root):
    scene = ETH3DScene(root, "facade_000", cache_dir=False)
    return scene, scene.view_names[0]


def test_missing_calibration(scene_copy):
    path = scene_copy / "facade_000" / "dslr_calibration_jpg" / "cameras.txt"
    path.unlink()
    assert str(path) in _error(lambda: ETH3DScene(scene_copy, "facade_000", cache_dir=False))


def test_missing_scene_names_the_calibration(scene_copy):
    message = _error(lambda: ETH3DScene(scene_copy, "no_such_scene", cache_dir=False))
    assert str(scene_copy / "no_such_scene" / "dslr_calibration_jpg" / "cameras.txt") in message


def test_truncated_depth_file(scene_copy):
    scene, name = _first_view(scene_copy)
    path = scene.depth_path(name)
    path.write_bytes(path.read_bytes()[:-4])
    message = _error(lambda: scene.load_view(name, width=126))
    assert str(path) in message and "expected 393216" in message  # 4 * 384 * 256


def test_mask_of_wrong_size(scene_copy):
    scene, name = _first_view(scene_copy)
    path = scene.mask_path(name)
    cv2.imwrite(str(path), np.zeros((100, 150), np.uint8))
    message = _error(lambda: scene.load_view(name, width=126))
    assert str(path) in message and "150x100" in message and "384x256" in message


def test_mask_with_foreign_values(scene_copy):
    scene, name = _first_view(scene_copy)
    path = scene.mask_path(name)
    cv2.imwrite(str(path), np.full((256, 384), 255, np.uint8))
    assert str(path) in _error(lambda: scene.load_view(name, width=126))


def test_image_listed_but_absent(scene_copy):
    scene, name = _first_view(scene_copy)
    path = scene.image_path(name)
    path.unlink()
    message = _error(lambda: scene.load_view(name, width=126))
    assert str(path) in message and "missing" in message


def test_unknown_camera_model(scene_copy):
    path = scene_copy / "facade_000" / "dslr_calibration_jpg" / "cameras.txt"
    path.write_text(path.read_text().replace("THIN_PRISM_FISHEYE", "WARPED_LENS", 1))
    message = _error(lambda: ETH3DScene(scene_copy, "facade_000", cache_dir=False))
    assert f"{path}:4:" in message and "WARPED_LENS" in message


def test_known_but_unsupported_camera_model(scene_copy):
    path = scene_copy / "facade_000" / "dslr_calibration_jpg" / "cameras.txt"
    lines = path.read_text().splitlines()
    lines[3] = "0 OPENCV 384 256 200 200 192 128 0.1 0.01 0 0"
    path.write_text("\n".join(lines) + "\n")
    message = _error(lambda: ETH3DScene(scene_copy, "facade_000", cache_dir=False))
    assert str(path) in message and "OPENCV" in message


def test_image_size_differs_from_calibration(scene_copy):
    scene, name = _first_view(scene_copy)
    path = scene.image_path(name)
    cv2.imwrite(str(path), np.zeros((200, 300, 3), np.uint8))
    assert str(path) in _error(lambda: scene.load_view(name, width=126))


def test_bad_width_and_view(scene_copy):
    scene, name = _first_view(scene_copy)
    assert "width 500" in _error(lambda: scene.load_view(name, width=500))
    assert "DSC_9999" in _error(lambda: scene.load_view("dslr_images/DSC_9999.JPG"))


def test_windows_bad_arguments(synthetic_root):
    assert "num_views=99" in _error(lambda: ETH3DWindows(synthetic_root, split="train", num_views=99, cache_dir=False))
    assert "val_scenes" in _error(lambda: ETH3DWindows(synthetic_root, val_scenes=["nope"], cache_dir=False))
    assert "no val scenes" in _error(lambda: ETH3DWindows(synthetic_root, scenes=["facade_000"], split="val", cache_dir=False))
