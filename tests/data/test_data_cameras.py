"""THIN_PRISM_FISHEYE (ETH3D's exact model) and pinhole projection."""

import numpy as np
import pytest

from lora_train.data import cameras as cm

# courtyard's camera 0 (eth3d.md §1.3)
ETH3D_PARAMS = (3411.42, 3410.02, 3041.29, 2014.07, 0.21047, 0.21102, -5.36231e-06, 0.00051541,
                -0.158023, 0.406856, -8.46499e-05, 0.000861313)


def test_thin_prism_matches_the_written_formula():
    fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, sx1, sy1 = ETH3D_PARAMS
    x, y = 0.4, -0.25
    r = np.hypot(x, y)
    th = np.arctan(r)
    u, v = x * th / r, y * th / r
    t2 = th * th
    radial = 1 + k1 * t2 + k2 * t2**2 + k3 * t2**3 + k4 * t2**4
    du = u * radial + 2 * p1 * u * v + p2 * (t2 + 2 * u * u) + sx1 * t2
    dv = v * radial + 2 * p2 * u * v + p1 * (t2 + 2 * v * v) + sy1 * t2
    px, py = cm.project("THIN_PRISM_FISHEYE", ETH3D_PARAMS, np.array(x), np.array(y))
    assert px == pytest.approx(fx * du + cx, abs=1e-9) and py == pytest.approx(fy * dv + cy, abs=1e-9)


def test_thin_prism_terms_matter():
    """p and s terms move pixels: a model that drops them (cv2.fisheye) would be off."""
    x, y = np.array([0.7]), np.array([0.45])
    full = np.array(cm.project("THIN_PRISM_FISHEYE", ETH3D_PARAMS, x, y))
    no_prism = ETH3D_PARAMS[:6] + (0.0, 0.0) + ETH3D_PARAMS[8:10] + (0.0, 0.0)
    radial_only = np.array(cm.project("THIN_PRISM_FISHEYE", no_prism, x, y))
    assert np.abs(full - radial_only).max() > 1.0  # pixels at full resolution


def test_unproject_inverts_project_over_the_whole_image():
    cols, rows = np.meshgrid(np.linspace(0, 6048, 41), np.linspace(0, 4032, 31))
    x, y = cm.unproject("THIN_PRISM_FISHEYE", ETH3D_PARAMS, cols, rows)
    px, py = cm.project("THIN_PRISM_FISHEYE", ETH3D_PARAMS, x, y)
    assert np.abs(px - cols).max() < 1e-6 and np.abs(py - rows).max() < 1e-6


def test_zero_distortion_is_equidistant_fisheye():
    params = (100.0, 110.0, 50.0, 40.0) + (0.0,) * 8
    x, y = np.array([0.3]), np.array([-0.2])
    r = np.hypot(x, y)
    px, py = cm.project("THIN_PRISM_FISHEYE", params, x, y)
    np.testing.assert_allclose([px[0], py[0]], [100 * x[0] * np.arctan(r[0]) / r[0] + 50, 110 * y[0] * np.arctan(r[0]) / r[0] + 40])


def test_pinhole_and_simple_pinhole():
    assert cm.project("PINHOLE", (10.0, 20.0, 1.0, 2.0), np.array(0.5), np.array(0.25)) == (6.0, 7.0)
    assert cm.focal_and_center("SIMPLE_PINHOLE", (10.0, 1.0, 2.0)) == (10.0, 10.0, 1.0, 2.0)
    with pytest.raises(ValueError):
        cm.project("OPENCV", (1.0,) * 8, np.array(0.0), np.array(0.0))


def test_quaternion_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        rot = cm.quaternion_to_rotation(q)
        q2 = cm.rotation_to_quaternion(rot)
        assert q2[0] >= 0
        np.testing.assert_allclose(cm.quaternion_to_rotation(q2), rot, atol=1e-12)
