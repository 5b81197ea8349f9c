"""Procedural, footprint-filtered textures for the synthetic ETH3D scenes.

Every texture maps surface coordinates (a, b) in metres to RGB in [0, 1]. `footprint` is the
size of one pixel on the surface (metres); fine features fade to their mean colour as it grows,
which keeps renders at different resolutions comparable (little aliasing).
"""

import numpy as np


def cell_hash(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic hash of integer lattice cells → float in [0, 1)."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (seed * 83492791 + 1013904223)
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).astype(np.float64) / float(0x1000000)


def value_noise(a: np.ndarray, b: np.ndarray, cell: float, seed: int) -> np.ndarray:
    """Smooth lattice noise in [0, 1) with features of size `cell` metres."""
    x, y = a / cell, b / cell
    ix, iy = np.floor(x), np.floor(y)
    fx, fy = x - ix, y - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    n00, n10 = cell_hash(ix, iy, seed), cell_hash(ix + 1, iy, seed)
    n01, n11 = cell_hash(ix, iy + 1, seed), cell_hash(ix + 1, iy + 1, seed)
    return (n00 * (1 - fx) + n10 * fx) * (1 - fy) + (n01 * (1 - fx) + n11 * fx) * fy


def _lines(x: np.ndarray, period: float, width: float, footprint: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of lines `width` wide every `period` metres, filtered by `footprint`."""
    d = np.abs(np.mod(x + period / 2, period) - period / 2)
    soft = np.maximum(footprint, 1e-4)
    line = np.clip((width / 2 - d) / soft + 0.5, 0.0, 1.0)
    fade = np.clip(footprint / period, 0.0, 1.0)
    return (1 - fade) * line + fade * (width / period)


def _fade_detail(detail: np.ndarray, footprint: np.ndarray, size: float) -> np.ndarray:
    """Blend a per-cell detail value towards 0.5 once cells shrink below a pixel."""
    fade = np.clip(footprint / size, 0.0, 1.0)
    return (1 - fade) * detail + fade * 0.5


def texture(kind: str, params: dict, a: np.ndarray, b: np.ndarray, footprint: np.ndarray, seed: int) -> np.ndarray:
    """RGB [N, 3] of texture `kind` at surface coordinates a, b [N] (metres)."""
    base = np.asarray(params.get("color", (0.6, 0.6, 0.6)), dtype=np.float64)
    coarse = value_noise(a, b, params.get("noise_cell", 0.9), seed)
    fine = _fade_detail(value_noise(a, b, 0.12, seed + 1), footprint, 0.12)
    shade = 0.82 + 0.22 * coarse + 0.08 * (fine - 0.5)
    if kind == "plaster":
        rgb = base[None] * shade[:, None]
    elif kind in ("brick", "tiles"):
        bw, bh = params.get("size", (0.4, 0.15) if kind == "brick" else (0.6, 0.6))
        row = np.floor(b / bh)
        offset = np.where(np.mod(row, 2) == 1, bw / 2, 0.0) if kind == "brick" else 0.0
        col = np.floor((a + offset) / bw)
        detail = _fade_detail(cell_hash(col, row, seed + 7), footprint, min(bw, bh))
        body = base[None] * (0.78 + 0.4 * detail * shade)[:, None]
        mortar_w = params.get("joint", 0.02)
        joint = np.maximum(_lines(a + offset, bw, mortar_w, footprint), _lines(b, bh, mortar_w, footprint))
        joint_rgb = np.asarray(params.get("joint_color", (0.78, 0.76, 0.72)))
        rgb = body * (1 - joint[:, None]) + joint_rgb[None] * joint[:, None]
    elif kind == "glass":
        sky = np.asarray(params.get("tint", (0.55, 0.65, 0.78)))
        t = np.clip(0.3 + 0.6 * coarse, 0, 1)[:, None]
        rgb = base[None] * (1 - t) + sky[None] * t * 0.6
    elif kind == "stripes":
        period = params.get("period", 0.3)
        other = np.asarray(params.get("color2", (0.2, 0.2, 0.25)))
        s = _lines(a, period, period / 2, footprint)[:, None]
        rgb = (base[None] * (1 - s) + other[None] * s) * shade[:, None]
    elif kind == "checker":
        size = params.get("period", 0.5)
        other = np.asarray(params.get("color2", (0.15, 0.15, 0.15)))
        parity = np.mod(np.floor(a / size) + np.floor(b / size), 2)
        parity = _fade_detail(parity, footprint, size)[:, None]
        rgb = (base[None] * (1 - parity) + other[None] * parity) * shade[:, None]
    elif kind == "dots":
        period = params.get("period", 0.35)
        other = np.asarray(params.get("color2", (0.9, 0.9, 0.85)))
        da = np.mod(a, period) - period / 2
        db = np.mod(b, period) - period / 2
        radius = period * 0.3
        dot = np.clip((radius - np.sqrt(da * da + db * db)) / np.maximum(footprint, 1e-4) + 0.5, 0, 1)
        fade = np.clip(footprint / period, 0, 1)
        dot = ((1 - fade) * dot + fade * np.pi * 0.09)[:, None]
        rgb = (base[None] * (1 - dot) + other[None] * dot) * shade[:, None]
    elif kind == "noise":
        other = np.asarray(params.get("color2", (0.3, 0.5, 0.3)))
        t = value_noise(a, b, params.get("period", 0.4), seed + 3)[:, None]
        rgb = (base[None] * (1 - t) + other[None] * t) * shade[:, None]
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    return np.clip(rgb, 0.0, 1.0)
