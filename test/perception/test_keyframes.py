"""Keyframe policy and pose history (ROS-free)."""

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from onlineanyseg_ros.perception.keyframes import (KeyframePolicyConfig, KeyframeSelector,
                                                   PoseHistory, relative_motion)

MS = 1_000_000


def _pose(x=0.0, yaw_deg=0.0, axis='z'):
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler(axis, yaw_deg, degrees=True).as_matrix()
    T[0, 3] = x
    return T


def _keyframe_indices(selector, poses):
    return [i for i, T in enumerate(poses) if selector.add_frame(T)]


def test_first_frame_then_every_n():
    selector = KeyframeSelector(KeyframePolicyConfig(every_n_frames=4))
    assert _keyframe_indices(selector, [_pose()] * 10) == [0, 4, 8]
    assert (selector.frames, selector.keyframes) == (10, 3)


def test_every_frame_when_n_is_one():
    selector = KeyframeSelector(KeyframePolicyConfig(every_n_frames=1))
    assert _keyframe_indices(selector, [_pose()] * 3) == [0, 1, 2]


def test_translation_rule_measures_from_last_keyframe_not_last_frame():
    selector = KeyframeSelector(KeyframePolicyConfig(every_n_frames=0, min_translation_m=0.25))
    # 0.1 m steps: 0.2 m since the keyframe is not enough, 0.3 m is.
    poses = [_pose(x=0.1 * i) for i in range(7)]
    assert _keyframe_indices(selector, poses) == [0, 3, 6]


def test_rotation_rule_and_counter_rule_combine():
    config = KeyframePolicyConfig(every_n_frames=5, min_rotation_deg=30.0)
    selector = KeyframeSelector(config)
    yaws = [0, 10, 20, 35, 36, 37, 38, 39, 40, 41]
    assert _keyframe_indices(selector, [_pose(yaw_deg=y) for y in yaws]) == [0, 3, 8]


def test_rotation_about_any_axis_counts():
    selector = KeyframeSelector(KeyframePolicyConfig(every_n_frames=0, min_rotation_deg=10.0))
    assert selector.add_frame(_pose())
    assert not selector.add_frame(_pose(yaw_deg=9.0, axis='x'))
    assert selector.add_frame(_pose(yaw_deg=11.0, axis='x'))


def test_is_due_does_not_change_state_and_reset_restarts():
    selector = KeyframeSelector(KeyframePolicyConfig(every_n_frames=3))
    assert selector.is_due(_pose()) and selector.is_due(_pose())
    assert selector.add_frame(_pose())
    assert not selector.add_frame(_pose())
    selector.reset()
    assert selector.add_frame(_pose())
    assert selector.keyframes == 2


def test_invalid_pose_is_rejected():
    selector = KeyframeSelector()
    bad = _pose()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match='rigid'):
        selector.add_frame(bad)
    assert selector.frames == 0


def test_config_needs_an_active_rule_and_checks_ranges():
    with pytest.raises(ValueError, match='no keyframe rule'):
        KeyframePolicyConfig(every_n_frames=0)
    with pytest.raises(ValueError, match='min_rotation_deg'):
        KeyframePolicyConfig(min_rotation_deg=200.0)


@pytest.mark.parametrize('angle_deg', [0.0, 1e-4, 45.0, 179.9, 180.0])
def test_relative_motion_angle_and_distance(angle_deg):
    a = _pose(x=1.0, yaw_deg=10.0)
    b = _pose(x=4.0, yaw_deg=0.0)
    b[:3, :3] = a[:3, :3] @ Rotation.from_rotvec(
        np.radians(angle_deg) * np.array([1.0, 2.0, 2.0]) / 3.0).as_matrix()
    translation_m, rotation_deg = relative_motion(a, b)
    assert translation_m == pytest.approx(3.0)
    assert rotation_deg == pytest.approx(angle_deg, abs=1e-6)


def test_pose_history_exact_within_tolerance_and_interpolated():
    history = PoseHistory(tolerance_ns=2 * MS)
    assert history.lookup(0) is None
    assert history.add(100 * MS, _pose(x=0.0, yaw_deg=0.0))
    assert history.add(200 * MS, _pose(x=1.0, yaw_deg=90.0))
    assert np.allclose(history.lookup(101 * MS), _pose())
    middle = history.lookup(150 * MS)
    assert np.allclose(middle, _pose(x=0.5, yaw_deg=45.0))
    quarter = history.lookup(125 * MS)
    assert relative_motion(_pose(), quarter)[1] == pytest.approx(22.5)
    # Outside the samples: not known (before) or not yet known (after).
    assert history.lookup(90 * MS) is None
    assert history.lookup(210 * MS) is None


def test_pose_history_invalid_sample_poisons_its_stamp_and_interval():
    history = PoseHistory(tolerance_ns=1 * MS)
    history.add(0, _pose())
    bad = _pose(x=0.2)
    bad[0, 0] = math.nan
    assert not history.add(100 * MS, bad)
    history.add(200 * MS, _pose(x=0.4))
    assert np.isnan(history.lookup(100 * MS)).all()
    assert np.isnan(history.lookup(50 * MS)).all()
    assert np.isnan(history.lookup(150 * MS)).all()
    assert np.allclose(history.lookup(200 * MS), _pose(x=0.4))
    # A non-rigid (scaled) matrix is just as invalid as a NaN one.
    assert not history.add(300 * MS, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_pose_history_window_prunes_and_old_sample_restarts():
    history = PoseHistory(tolerance_ns=0, window_ns=1000 * MS)
    for stamp_ms in range(0, 3000, 500):
        history.add(stamp_ms * MS, _pose(x=stamp_ms / 1000))
    assert len(history) == 3            # 1500, 2000, 2500 ms
    assert history.lookup(1000 * MS) is None
    history.add(100 * MS, _pose(x=-1.0))  # time went backwards (bag loop)
    assert len(history) == 1 and history.restarts == 1
    assert np.allclose(history.lookup(100 * MS), _pose(x=-1.0))


def test_pose_history_equal_stamp_replaces():
    history = PoseHistory()
    history.add(5, _pose(x=1.0))
    history.add(5, _pose(x=2.0))
    assert len(history) == 1
    assert history.lookup(5)[0, 3] == pytest.approx(2.0)
