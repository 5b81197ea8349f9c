"""The per-window depth PNG: panels in the documented order, GT holes black, colours from the values."""

import cv2
import numpy as np
import torch

from lora_train.visualize import GAP, HEADER, render_window, save_visualization


def _window(views=2, height=40, width=240):
    yy, xx = np.mgrid[0:height, 0:width]
    depth = np.stack([2.0 + xx / width * 8.0 + v for v in range(views)]).astype(np.float32)  # 2..11 m ramps
    mask = np.ones_like(depth)
    mask[:, 5:15, 20:60] = 0  # a hole in the GT
    images = torch.rand(views, 3, height, width)
    return {"images": images, "depths": torch.from_numpy(depth), "point_masks": torch.from_numpy(mask),
            "scene": "ramp"}, depth


def _panel(picture, view, col, height=40, width=240):
    top = 2 * HEADER + view * (height + GAP)
    left = col * (width + GAP)
    return picture[top:top + height, left:left + width]


def test_panels_follow_the_values():
    window, depth = _window()
    picture = render_window(window, {"exact": depth.copy(), "scaled": depth * 3.0}, align="median")
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    for view in range(2):
        rgb = _panel(picture, view, 0)
        expected = cv2.cvtColor((window["images"][view].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
                                cv2.COLOR_RGB2BGR)
        assert np.abs(rgb.astype(int) - expected).max() <= 1
        exact, scaled, gt, error = (_panel(picture, view, c) for c in (1, 2, 3, 4))
        valid = window["point_masks"][view].numpy().astype(bool)
        # median alignment undoes a global scale: both predictions look like the GT where it exists
        assert np.abs(exact[valid].astype(int) - gt[valid]).max() <= 2
        assert np.abs(scaled[valid].astype(int) - gt[valid]).max() <= 2
        assert (gt[~valid] == 0).all() and (error[~valid] == 0).all()  # holes are black
        assert (exact[~valid] != 0).any(axis=-1).all()  # predictions are shown everywhere
        # zero error → the bottom colour of inferno (near black)
        assert error[valid].max() <= 10
        # depth grows left to right: the turbo colours change along the row
        assert not np.array_equal(gt[0, 0], gt[0, -1])


def test_error_panel_lights_up_where_the_prediction_is_wrong(tmp_path):
    window, depth = _window(views=1)
    wrong = depth.copy()
    wrong[:, :, 150:] *= 1.4  # 40 % too far on the right part (median scale stays 1)
    path = tmp_path / "vis" / "window_000.png"
    save_visualization(path, window, {"adapter": wrong}, align="none")
    picture = cv2.imread(str(path))
    assert picture is not None and not list(path.parent.glob("*.tmp.png"))
    error = _panel(picture, 0, 3)
    assert error[:, :100].max() <= 10 and error[:, 160:].mean() > 60
