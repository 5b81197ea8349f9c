"""Depth and pose metrics on hand-computed cases."""

import math

import numpy as np
import pytest

from lora_train.errors import UserError
from lora_train.metrics import DEPTH_METRIC_KEYS, depth_metrics, pose_auc, pose_metrics


def _gt(seed=0, shape=(3, 4, 5)):
    return np.random.default_rng(seed).uniform(1.0, 10.0, size=shape)


def test_hand_computed_values_without_alignment():
    gt = np.array([[1.0, 2.0, 2.0, 1.0]])
    pred = np.array([[2.0, 1.0, 3.0, 1.9]])  # ratios 2, 2, 1.5, 1.9
    m = depth_metrics(pred, gt, np.ones_like(gt, bool), align="none")
    assert m["abs_rel"] == pytest.approx((1 + 0.5 + 0.5 + 0.9) / 4)
    assert m["sq_rel"] == pytest.approx((1 + 0.5 + 0.5 + 0.81) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 1 + 1 + 0.81) / 4))
    logs = [math.log(2), math.log(2), math.log(1.5), math.log(1.9)]
    assert m["log_rmse"] == pytest.approx(math.sqrt(sum(v * v for v in logs) / 4))
    assert m["delta1"] == 0.0
    assert m["delta2"] == pytest.approx(0.25)  # 1.5 < 1.5625
    assert m["delta3"] == pytest.approx(0.5)  # 1.5 and 1.9 < 1.953
    assert m["tau103"] == 0.0
    assert set(m) == set(DEPTH_METRIC_KEYS)


def test_scaled_prediction_median_alignment():
    gt = _gt()
    valid = np.ones_like(gt, bool)
    aligned = depth_metrics(2 * gt, gt, valid, align="median")
    for key in ("abs_rel", "sq_rel", "rmse", "log_rmse"):
        assert aligned[key] == pytest.approx(0.0, abs=1e-12)
    for key in ("delta1", "delta2", "delta3", "tau103"):
        assert aligned[key] == 1.0
    raw = depth_metrics(2 * gt, gt, valid, align="none")
    assert raw["abs_rel"] == pytest.approx(1.0)
    assert raw["log_rmse"] == pytest.approx(math.log(2))
    assert raw["delta1"] == raw["delta3"] == 0.0  # ratio 2 > 1.25^3


def test_two_percent_error_is_tau_inlier():
    gt = _gt(1)
    m = depth_metrics(gt * 1.02, gt, np.ones_like(gt, bool), align="none")
    assert m["tau103"] == 1.0 and m["delta1"] == 1.0
    assert m["abs_rel"] == pytest.approx(0.02)
    m = depth_metrics(gt * 1.04, gt, np.ones_like(gt, bool), align="none")
    assert m["tau103"] == 0.0 and m["delta1"] == 1.0


def test_lsq_recovers_scale_and_shift():
    gt = _gt(2)
    pred = (gt - 0.5) / 3.0  # gt = 3 * pred + 0.5
    valid = np.ones_like(gt, bool)
    lsq = depth_metrics(pred, gt, valid, align="lsq")
    assert lsq["abs_rel"] == pytest.approx(0.0, abs=1e-9)
    assert lsq["tau103"] == 1.0
    median = depth_metrics(pred, gt, valid, align="median")
    assert median["abs_rel"] > 0.01  # a scale alone cannot absorb the shift


def test_lsq_non_positive_results_are_clipped():
    gt = np.array([[1.0, 1.0, 1.0, 50.0]])
    pred = np.array([[3.0, 2.0, 2.5, 60.0]])  # fit puts small depths near or below zero
    m = depth_metrics(pred, gt, np.ones_like(gt, bool), align="lsq")
    assert all(np.isfinite(v) for v in m.values())


def test_sequence_vs_frame_median_alignment():
    gt = np.ones((2, 2, 2))
    pred = np.stack([np.ones((2, 2)), 2 * np.ones((2, 2))])
    valid = np.ones_like(gt, bool)
    assert depth_metrics(pred, gt, valid, align="median_frame")["abs_rel"] == pytest.approx(0.0)
    # sequence medians: gt 1, pred 1.5 -> scale 2/3 -> frames at 2/3 and 4/3, both 1/3 off
    assert depth_metrics(pred, gt, valid, align="median")["abs_rel"] == pytest.approx(1 / 3)


def test_mean_over_frames_not_pixels_and_masking():
    gt = np.ones((3, 2, 2))
    pred = np.ones((3, 2, 2))
    valid = np.zeros((3, 2, 2), bool)
    valid[0, 0, 0] = True
    pred[0, 0, 0] = 1.5  # frame 0: one pixel, abs_rel 0.5
    valid[1] = True  # frame 1: four exact pixels
    pred[2] = 100.0  # frame 2: no valid pixel, skipped
    pred[1, 0, 0] = np.nan  # invalid prediction is dropped from frame 1
    gt[1, 0, 1] = 0.0  # GT 0 is not a valid pixel even when the mask says so
    assert depth_metrics(pred, gt, valid, align="none")["abs_rel"] == pytest.approx(0.25)


def test_single_frame_and_empty_input():
    gt = _gt(3, shape=(4, 5))
    assert depth_metrics(gt, gt, np.ones_like(gt, bool))["abs_rel"] == pytest.approx(0.0)
    empty = depth_metrics(gt, gt, np.zeros_like(gt, bool))
    assert set(empty) == set(DEPTH_METRIC_KEYS) and all(math.isnan(v) for v in empty.values())


def test_bad_depth_arguments():
    gt = _gt()
    with pytest.raises(UserError, match="align"):
        depth_metrics(gt, gt, np.ones_like(gt, bool), align="umeyama")
    with pytest.raises(UserError, match="shapes differ"):
        depth_metrics(gt[:2], gt, np.ones_like(gt, bool))


def _rot_z(degrees):
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])


def _random_cameras(n, seed):
    rng = np.random.default_rng(seed)
    cams = []
    for _ in range(n):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))
        cams.append(np.concatenate([q, rng.normal(size=(3, 1))], axis=1))
    return np.stack(cams)


def test_identical_cameras_and_world_frame_invariance():
    gt = _random_cameras(5, 0)
    m = pose_metrics(gt, gt)
    assert m["num_pairs"] == 10
    assert m["rot_err_mean"] == pytest.approx(0.0, abs=1e-5)
    assert m["trans_err_mean"] == pytest.approx(0.0, abs=1e-5)
    assert m["auc30"] == 1.0 and m["rra5"] == 1.0 and m["rta5"] == 1.0
    # the same cameras in another world frame at another scale: still perfect
    world = np.eye(4)
    world[:3, :3] = _random_cameras(1, 9)[0, :, :3]
    world[:3, 3] = [3.0, -1.0, 2.0]
    gt_h = np.concatenate([gt, np.tile([[[0, 0, 0, 1.0]]], (5, 1, 1))], axis=1)
    moved = gt_h @ np.linalg.inv(world)
    moved[:, :3, 3] *= 7.0
    m = pose_metrics(moved[:, :3], gt)
    assert m["rot_err_mean"] == pytest.approx(0.0, abs=1e-5)
    assert m["trans_err_mean"] == pytest.approx(0.0, abs=1e-4)


def test_known_rotation_and_translation_errors():
    gt = np.stack([np.eye(3, 4), np.concatenate([np.eye(3), [[1.0], [0.0], [0.0]]], axis=1)])
    pred = np.stack(
        [np.eye(3, 4), np.concatenate([_rot_z(10), _rot_z(20.5) @ np.array([[1.0], [0.0], [0.0]])], axis=1)]
    )
    m = pose_metrics(pred, gt)
    assert m["num_pairs"] == 1
    assert m["rot_err_mean"] == pytest.approx(10.0)
    assert m["trans_err_mean"] == pytest.approx(20.5)
    assert (m["rra5"], m["rra15"], m["rra30"]) == (0.0, 1.0, 1.0)
    assert (m["rta5"], m["rta15"], m["rta30"]) == (0.0, 0.0, 1.0)
    assert m["auc30"] == pytest.approx(10 / 30)  # max error 20.5: correct for thresholds 21..30
    flipped = pred.copy()
    flipped[1, :, 3] = -gt[1, :, 3]
    flipped[1, :, :3] = np.eye(3)
    assert pose_metrics(flipped, gt)["trans_err_mean"] == pytest.approx(0.0, abs=1e-6)  # sign-ambiguous


def test_pose_auc_hand_computed():
    # max errors 0.5, 10, 40: 1/3 correct for t = 1..10, 2/3 for t = 11..30
    assert pose_auc(np.array([0.5, 10.0, 3.0]), np.array([0.1, 2.0, 40.0])) == pytest.approx(5 / 9)


def test_pose_edge_cases():
    one = pose_metrics(np.eye(3, 4)[None], np.eye(3, 4)[None])
    assert one["num_pairs"] == 0 and math.isnan(one["auc30"])
    with pytest.raises(UserError, match="pred_extrinsics"):
        pose_metrics(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)))
