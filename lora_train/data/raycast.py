"""Ray casting of textured rectangles: the renderer behind the synthetic ETH3D scenes.

A scene is a list of `Quad`s (rectangles `corner + a·edge_u + b·edge_v`, a, b in [0, 1]), each with
a material and an ETH3D mask label. Cameras are any model from `lora_train.data.cameras`; a pixel
(array coordinates, centre of the top-left pixel at (0, 0)) is cast along its exact ray, so depth
(z in the camera frame), colour and poses agree by construction.
"""

import functools
from dataclasses import dataclass, field

import numpy as np

from lora_train.data import cameras as camera_models
from lora_train.data.textures import texture


@dataclass
class Quad:
    """Rectangle `corner + a·edge_u + b·edge_v` (a, b in [0, 1]); edges are orthogonal.

    `label` is the ETH3D mask value of the surface (0 normal, 1 obs mask, 2 eval mask: no GT).
    """

    corner: np.ndarray
    edge_u: np.ndarray
    edge_v: np.ndarray
    material: str
    label: int = 0


@dataclass
class Material:
    kind: str
    params: dict = field(default_factory=dict)


@dataclass
class Geometry:
    """A renderable scene: quads, named materials, sun direction and the world's up axis."""

    quads: list[Quad]
    materials: dict[str, Material]
    sun: np.ndarray = field(default_factory=lambda: np.array([0.4, -0.6, 0.7]))
    up: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    seed: int = 0


@dataclass
class RayCamera:
    """A camera for rendering: COLMAP model/params, image size, camera-from-world pose."""

    model: str
    params: tuple
    width: int
    height: int
    rotation: np.ndarray  # [3, 3] camera-from-world
    translation: np.ndarray  # [3]

    @classmethod
    def pinhole(cls, intrinsics_opencv: np.ndarray, width: int, height: int, extrinsics: np.ndarray) -> "RayCamera":
        """From an OpenCV-convention 3x3 K and a 3x4 camera-from-world matrix."""
        k = intrinsics_opencv
        params = (k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5)
        return cls("PINHOLE", params, width, height, extrinsics[:, :3].copy(), extrinsics[:, 3].copy())

    def pixel_rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Normalised coordinates (X/Z, Y/Z) of every pixel centre, each [H, W] (read-only, cached)."""
        return _pixel_rays(self.model, tuple(float(p) for p in self.params), self.width, self.height)

    def focal(self) -> float:
        fx, fy, _, _ = camera_models.focal_and_center(self.model, self.params)
        return 0.5 * (fx + fy)


@dataclass
class Hits:
    """Per-pixel first hit: z-depth (inf = miss), quad index (-1), texture coordinates (metres)."""

    z: np.ndarray
    quad: np.ndarray
    a: np.ndarray
    b: np.ndarray


_OUTLINE_SAMPLES = 9


@functools.lru_cache(maxsize=32)
def _pixel_rays(model: str, params: tuple, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x, y = camera_models.unproject(model, params, cols, rows)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _quad_arrays(geometry: Geometry) -> dict:
    """Stacked quad data (cached on the geometry): corners, edges, normals, outlines [Q, P, 3]."""
    cached = getattr(geometry, "_arrays", None)
    if cached is not None and cached["count"] == len(geometry.quads):
        return cached
    corner = np.array([q.corner for q in geometry.quads])
    edge_u = np.array([q.edge_u for q in geometry.quads])
    edge_v = np.array([q.edge_v for q in geometry.quads])
    t = np.linspace(0.0, 1.0, _OUTLINE_SAMPLES)
    border = np.concatenate([np.stack([t, 0 * t], 1), np.stack([t, 0 * t + 1], 1),
                             np.stack([0 * t, t], 1), np.stack([0 * t + 1, t], 1)])
    outline = corner[:, None] + border[None, :, :1] * edge_u[:, None] + border[None, :, 1:] * edge_v[:, None]
    normal = np.cross(edge_u, edge_v)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    len_u, len_v = np.linalg.norm(edge_u, axis=1), np.linalg.norm(edge_v, axis=1)
    material_names = sorted(geometry.materials)
    arrays = {
        "count": len(geometry.quads),
        "corner": corner,
        "edge_u": edge_u,
        "edge_v": edge_v,
        "outline": outline,
        "normal": normal,
        # Texture coordinates are world positions along the edges, so coplanar pieces line up.
        "offset_u": np.einsum("ij,ij->i", corner, edge_u) / len_u,
        "offset_v": np.einsum("ij,ij->i", corner, edge_v) / len_v,
        "label": np.array([q.label for q in geometry.quads] + [0], dtype=np.uint8),
        "material_names": material_names,
        "material": np.array([material_names.index(q.material) for q in geometry.quads], dtype=np.int64),
    }
    geometry._arrays = arrays
    return arrays


def _pixel_windows(camera: RayCamera, outline_cam: np.ndarray) -> list:
    """Per quad: array-pixel window (slices) covering its projection, None if unseen."""
    z = outline_cam[..., 2]
    in_front = np.all(z > 1e-3, axis=1)
    behind = np.all(z <= 1e-3, axis=1)
    safe_z = np.where(z > 1e-3, z, 1.0)
    px, py = camera_models.project(camera.model, camera.params, outline_cam[..., 0] / safe_z, outline_cam[..., 1] / safe_z)
    x0 = np.maximum(np.floor(px.min(1) - 0.5).astype(int) - 2, 0)
    x1 = np.minimum(np.ceil(px.max(1) - 0.5).astype(int) + 3, camera.width)
    y0 = np.maximum(np.floor(py.min(1) - 0.5).astype(int) - 2, 0)
    y1 = np.minimum(np.ceil(py.max(1) - 0.5).astype(int) + 3, camera.height)
    windows = []
    for q in range(len(z)):
        if behind[q] or (in_front[q] and (x0[q] >= x1[q] or y0[q] >= y1[q])):
            windows.append(None)
        elif in_front[q]:
            windows.append((slice(y0[q], y1[q]), slice(x0[q], x1[q])))
        else:  # straddles the camera plane: test every pixel
            windows.append((slice(None), slice(None)))
    return windows


def cast(geometry: Geometry, camera: RayCamera, rays: tuple[np.ndarray, np.ndarray] | None = None) -> Hits:
    """First intersection of every pixel ray with the scene's quads (a z-buffer over quads)."""
    xn, yn = rays if rays is not None else camera.pixel_rays()
    shape = xn.shape
    z = np.full(shape, np.inf)
    quad_index = np.full(shape, -1, dtype=np.int64)
    a_best, b_best = np.zeros(shape), np.zeros(shape)
    arrays = _quad_arrays(geometry)
    rot, trans = camera.rotation, camera.translation
    corners = arrays["corner"] @ rot.T + trans
    edges_u, edges_v = arrays["edge_u"] @ rot.T, arrays["edge_v"] @ rot.T
    normals = np.cross(edges_u, edges_v)
    offset_u, offset_v = arrays["offset_u"], arrays["offset_v"]
    windows = _pixel_windows(camera, arrays["outline"] @ rot.T + trans)
    for i, window in enumerate(windows):
        if window is None:
            continue
        corner, eu, ev, normal = corners[i], edges_u[i], edges_v[i], normals[i]
        sx, sy = xn[window], yn[window]
        denom = sx * normal[0] + sy * normal[1] + normal[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = np.dot(corner, normal) / denom
        zw = z[window]
        hit = (depth > 1e-6) & (depth < zw)
        if not hit.any():
            continue
        px, py, pz = sx * depth - corner[0], sy * depth - corner[1], depth - corner[2]
        len_u2, len_v2 = np.dot(eu, eu), np.dot(ev, ev)
        fa = (px * eu[0] + py * eu[1] + pz * eu[2]) / len_u2
        fb = (px * ev[0] + py * ev[1] + pz * ev[2]) / len_v2
        hit &= (fa >= 0) & (fa <= 1) & (fb >= 0) & (fb <= 1)
        zw[hit] = depth[hit]
        quad_index[window][hit] = i
        a_best[window][hit] = fa[hit] * np.sqrt(len_u2) + offset_u[i]
        b_best[window][hit] = fb[hit] * np.sqrt(len_v2) + offset_v[i]
    return Hits(z, quad_index, a_best, b_best)


def sky_color(directions_world: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Sky gradient [..., 3] for world ray directions [..., 3]."""
    elevation = (directions_world @ up) / np.linalg.norm(directions_world, axis=-1)
    t = np.clip(elevation, 0.0, 1.0)[..., None]
    horizon, zenith = np.array([0.85, 0.88, 0.92]), np.array([0.45, 0.62, 0.88])
    return horizon * (1 - t) + zenith * t


def shade(geometry: Geometry, camera: RayCamera, hits: Hits, rays: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Lambert-shaded texture colour per pixel, sky where nothing is hit: [H, W, 3] in [0, 1]."""
    xn, yn = rays if rays is not None else camera.pixel_rays()
    arrays = _quad_arrays(geometry)
    dirs_world = np.stack([xn, yn, np.ones_like(xn)], axis=-1) @ camera.rotation  # Rᵀ d
    rgb = sky_color(dirs_world, geometry.up)
    hit = hits.quad >= 0
    quad = hits.quad[hit]
    d = dirs_world[hit]
    normal = arrays["normal"][quad]
    cos_view = np.einsum("ij,ij->i", d, normal) / np.linalg.norm(d, axis=-1)
    sun = geometry.sun / np.linalg.norm(geometry.sun)
    light = 0.55 + 0.45 * np.maximum(0.0, -np.sign(cos_view) * (normal @ sun))
    footprint = hits.z[hit] / camera.focal() / np.maximum(np.abs(cos_view), 0.15)
    a, b = hits.a[hit], hits.b[hit]
    material = arrays["material"][quad]
    color = np.zeros((len(quad), 3))
    for m, name in enumerate(arrays["material_names"]):
        sel = material == m
        if sel.any():
            mat = geometry.materials[name]
            color[sel] = texture(mat.kind, mat.params, a[sel], b[sel], footprint[sel], geometry.seed * 31 + m)
    rgb[hit] = color * light[:, None]
    return np.clip(rgb, 0.0, 1.0)


def labels(geometry: Geometry, hits: Hits) -> np.ndarray:
    """ETH3D mask label per pixel (uint8 in {0, 1, 2}); 0 for sky."""
    return _quad_arrays(geometry)["label"][hits.quad]


def render(geometry: Geometry, camera: RayCamera) -> dict:
    """Render one view: `image` [H, W, 3] uint8 RGB, `z` [H, W] (inf = miss), `label` [H, W] uint8."""
    rays = camera.pixel_rays()
    hits = cast(geometry, camera, rays)
    rgb = shade(geometry, camera, hits, rays)
    return {
        "image": np.round(rgb * 255).astype(np.uint8),
        "z": hits.z,
        "label": labels(geometry, hits),
        "hits": hits,
    }
