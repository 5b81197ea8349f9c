"""Depth visualisations: one PNG per window, a row per view with input | predictions | GT | error.

Drawn with numpy and OpenCV (about 20 ms a window instead of about 1 s for a grid of matplotlib
axes), so a sweep can afford them for every trial. Depth panels share one turbo colour scale
(2nd–98th percentile of the valid GT, in metres), the error panel is the absolute relative error
|pred − gt| / gt of the last prediction on inferno over [0, 0.5]; pixels without GT are black.
"""

from pathlib import Path

import cv2
import numpy as np

from lora_train.metrics import align_depth
from vggt_common.files import atomic_write

ERROR_RANGE = (0.0, 0.5)
MIN_PANEL_WIDTH = 240  # small training images are enlarged so that the labels stay legible
GAP = 4
HEADER = 22
SCALE_WIDTH = 70
FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_COLOUR = (20, 20, 20)


def save_visualization(path: Path, window: dict, predictions: dict[str, np.ndarray], align: str = "median") -> None:
    """Write the window's PNG (atomically).

    Args:
        path: PNG file to write.
        window: the window dict (`images [S,3,H,W]` in [0,1], `depths [S,H,W]` metres,
            `point_masks [S,H,W]`, optional `scene`).
        predictions: label → predicted depth `[S,H,W]`; each is aligned to the GT (`align`, fitted
            on valid pixels) before display; the error map is of the last one.
        align: alignment mode of `lora_train.metrics.align_depth`.
    """
    ok, encoded = cv2.imencode(".png", render_window(window, predictions, align))
    if not ok:
        raise OSError(f"could not encode {path}")
    atomic_write(path, encoded.tobytes())


def render_window(window: dict, predictions: dict[str, np.ndarray], align: str = "median") -> np.ndarray:
    """The visualisation as a BGR uint8 image `[rows, cols, 3]`."""
    images = window["images"].permute(0, 2, 3, 1).numpy()
    gt = window["depths"].numpy().astype(np.float64)
    valid = window["point_masks"].numpy().astype(bool) & np.isfinite(gt) & (gt > 0)
    aligned = {
        label: align_depth(np.nan_to_num(depth.astype(np.float64), nan=0.0, posinf=0.0), gt, valid, align)
        for label, depth in predictions.items()
    }
    low, high = np.percentile(gt[valid], [2, 98]) if valid.any() else (0.0, 1.0)
    last_label, last = list(aligned.items())[-1]
    error = np.abs(last - gt) / np.maximum(gt, 1e-6)

    rows = []
    for view in range(images.shape[0]):
        everywhere = np.ones_like(valid[view])
        panels = [_rgb_panel(images[view])]
        panels += [_colour_panel(depth[view], everywhere, low, high, cv2.COLORMAP_TURBO) for depth in aligned.values()]
        panels += [_colour_panel(gt[view], valid[view], low, high, cv2.COLORMAP_TURBO),
                   _colour_panel(error[view], valid[view], *ERROR_RANGE, cv2.COLORMAP_INFERNO)]
        rows.append(panels)

    height, width = rows[0][0].shape[:2]
    zoom = max(1.0, MIN_PANEL_WIDTH / width)
    size = (round(width * zoom), round(height * zoom))
    titles = ["input", *aligned, "GT", f"abs rel error ({last_label})"]
    body = np.vstack([
        _pad_row(np.hstack(_with_gaps([cv2.resize(p, size, interpolation=cv2.INTER_NEAREST) for p in panels])))
        for panels in rows
    ])
    header = _blank(HEADER, body.shape[1])
    for col, title in enumerate(titles):
        _text(header, title, (col * (size[0] + GAP) + 4, HEADER - 7), max_width=size[0] - 8)
    scales = np.hstack([
        _colour_scale(body.shape[0], low, high, cv2.COLORMAP_TURBO, "m"),
        _colour_scale(body.shape[0], *ERROR_RANGE, cv2.COLORMAP_INFERNO, ""),
    ])
    picture = np.hstack([np.vstack([header, body]), np.vstack([_blank(HEADER, scales.shape[1]), scales])])
    title = _blank(HEADER, picture.shape[1])
    _text(title, f"{window.get('scene', '')}  (depth in metres, predictions aligned: {align})", (4, HEADER - 7))
    return np.vstack([title, picture])


def _rgb_panel(image: np.ndarray) -> np.ndarray:
    """`[H,W,3]` RGB float in [0,1] → BGR uint8."""
    return cv2.cvtColor((np.clip(image, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)


def _colour_panel(values: np.ndarray, valid: np.ndarray, low: float, high: float, colormap: int) -> np.ndarray:
    """`values [H,W]` mapped linearly from [low, high] onto `colormap`; invalid pixels black."""
    scaled = (values - low) / max(high - low, 1e-12)
    scaled = np.nan_to_num(np.clip(scaled, 0, 1), nan=0.0)
    panel = cv2.applyColorMap((scaled * 255).round().astype(np.uint8), colormap)
    panel[~(valid & np.isfinite(values))] = 0
    return panel


def _colour_scale(height: int, low: float, high: float, colormap: int, unit: str) -> np.ndarray:
    """A vertical colour bar (high at the top) with its end values written beside it."""
    strip = np.linspace(255, 0, max(height - 24, 2)).round().astype(np.uint8)[:, None].repeat(14, axis=1)
    bar = _blank(height, SCALE_WIDTH)
    bar[12:12 + strip.shape[0], 4:18] = cv2.applyColorMap(strip, colormap)
    _text(bar, f"{high:.3g}{unit}", (21, 18), scale=0.38)
    _text(bar, f"{low:.3g}{unit}", (21, height - 8), scale=0.38)
    return bar


def _with_gaps(panels: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for panel in panels:
        out += [panel, _blank(panel.shape[0], GAP)]
    return out[:-1]


def _pad_row(row: np.ndarray) -> np.ndarray:
    return np.vstack([row, _blank(GAP, row.shape[1])])


def _blank(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), 255, np.uint8)


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.45, max_width: int | None = None) -> None:
    if max_width is not None:  # shrink a long title to its panel's width
        width = cv2.getTextSize(text, FONT, scale, 1)[0][0]
        if width > max_width:
            scale *= max_width / width
    cv2.putText(canvas, text, origin, FONT, scale, TEXT_COLOUR, 1, cv2.LINE_AA)
