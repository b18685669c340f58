"""TfBuffer interpolation, chains, statics and limits; the /tf listener over real rclpy."""

import importlib.util

import numpy as np
import pytest

from onlineanyseg_ros.ros.conversions.quaternion import invert_transform
from onlineanyseg_ros.ros.tf_buffer import make_pose_source, TfBuffer

S = 1_000_000_000
MS = 1_000_000


def _transform(yaw_rad=0.0, translation=(0.0, 0.0, 0.0), roll_rad=0.0):
    """Return a rigid 4x4 of a rotation about z (then x) and a translation."""
    cos_z, sin_z = np.cos(yaw_rad), np.sin(yaw_rad)
    cos_x, sin_x = np.cos(roll_rad), np.sin(roll_rad)
    rotation_z = np.array([[cos_z, -sin_z, 0.0], [sin_z, cos_z, 0.0], [0.0, 0.0, 1.0]])
    rotation_x = np.array([[1.0, 0.0, 0.0], [0.0, cos_x, -sin_x], [0.0, sin_x, cos_x]])
    T = np.eye(4)
    T[:3, :3] = rotation_z @ rotation_x
    T[:3, 3] = translation
    return T


def test_interpolation_is_slerp_and_lerp():
    buffer = TfBuffer()
    buffer.set_transform('world', 'base', 0, _transform())
    buffer.set_transform('world', 'base', 1 * S, _transform(np.pi / 2, (2.0, 4.0, -2.0)))
    np.testing.assert_allclose(buffer.lookup('world', 'base', S // 2),
                               _transform(np.pi / 4, (1.0, 2.0, -1.0)), atol=1e-12)
    np.testing.assert_allclose(buffer.lookup('world', 'base', S // 4),
                               _transform(np.pi / 8, (0.5, 1.0, -0.5)), atol=1e-12)
    np.testing.assert_allclose(buffer.lookup('world', 'base', S),
                               _transform(np.pi / 2, (2.0, 4.0, -2.0)), atol=1e-12)


def test_interpolation_takes_the_short_way_round():
    buffer = TfBuffer()
    buffer.set_transform('world', 'base', 0, _transform(np.deg2rad(170)))
    buffer.set_transform('world', 'base', S, _transform(np.deg2rad(-170)))
    np.testing.assert_allclose(buffer.lookup('world', 'base', S // 2), _transform(np.pi),
                               atol=1e-12)


def test_chains_through_the_common_ancestor():
    buffer = TfBuffer()
    T_world_odom = _transform(0.3, (1.0, 0.0, 0.0))
    T_odom_base = _transform(-0.2, (0.0, 2.0, 0.0), roll_rad=0.1)
    T_base_camera = _transform(1.0, (0.1, 0.0, 0.5), roll_rad=-np.pi / 2)
    T_base_lidar = _transform(0.0, (0.0, 0.0, 1.0))
    buffer.set_transform('world', 'odom', 5 * S, T_world_odom)
    buffer.set_transform('odom', 'base', 5 * S, T_odom_base)
    buffer.set_transform('base', 'camera', 0, T_base_camera, static=True)
    buffer.set_transform('base', 'lidar', 0, T_base_lidar, static=True)
    T_world_camera = T_world_odom @ T_odom_base @ T_base_camera
    np.testing.assert_allclose(buffer.lookup('world', 'camera', 5 * S), T_world_camera,
                               atol=1e-12)
    np.testing.assert_allclose(buffer.lookup('camera', 'world', 5 * S),
                               invert_transform(T_world_camera), atol=1e-12)
    np.testing.assert_allclose(buffer.lookup('lidar', 'camera', 5 * S),
                               invert_transform(T_base_lidar) @ T_base_camera, atol=1e-12)
    np.testing.assert_allclose(buffer.lookup('camera', 'camera', 5 * S), np.eye(4))
    assert buffer.frames() == ['base', 'camera', 'lidar', 'odom', 'world']


def test_static_transforms_hold_at_all_times():
    buffer = TfBuffer()
    T_base_camera = _transform(0.5, (0.0, 0.1, 0.2))
    buffer.set_transform('base', 'camera', 123, T_base_camera, static=True)
    for stamp_ns in (0, 1, 123, 10 ** 18):
        np.testing.assert_allclose(buffer.lookup('base', 'camera', stamp_ns), T_base_camera)


def test_extrapolation_is_refused_beyond_the_tolerance():
    buffer = TfBuffer(extrapolation_tolerance_ns=5 * MS)
    first, last = _transform(0.0, (1.0, 0.0, 0.0)), _transform(0.0, (2.0, 0.0, 0.0))
    buffer.set_transform('world', 'base', 1 * S, first)
    buffer.set_transform('world', 'base', 2 * S, last)
    np.testing.assert_allclose(buffer.lookup('world', 'base', 2 * S + 5 * MS), last)
    np.testing.assert_allclose(buffer.lookup('world', 'base', 1 * S - 5 * MS), first)
    assert buffer.lookup('world', 'base', 2 * S + 5 * MS + 1) is None
    assert buffer.lookup('world', 'base', 1 * S - 5 * MS - 1) is None


def test_out_of_order_inserts_and_replacements():
    buffer = TfBuffer()
    for seconds in (3, 1, 2):
        buffer.set_transform('world', 'base', seconds * S, _transform(0.0, (seconds, 0, 0)))
    buffer.set_transform('world', 'base', 2 * S, _transform(0.0, (4.0, 0.0, 0.0)))
    assert buffer.lookup('world', 'base', 3 * S // 2)[0, 3] == pytest.approx(2.5)
    assert buffer.lookup('world', 'base', 5 * S // 2)[0, 3] == pytest.approx(3.5)


def test_stamp_zero_means_the_latest_common_time():
    buffer = TfBuffer()
    for seconds in (1, 2):
        buffer.set_transform('world', 'odom', seconds * S, _transform(0, (seconds, 0, 0)))
    for seconds in (1, 2, 3):
        buffer.set_transform('odom', 'base', seconds * S, _transform(0, (0, seconds, 0)))
    np.testing.assert_allclose(buffer.lookup('world', 'base', 0)[:3, 3], [2.0, 2.0, 0.0])
    np.testing.assert_allclose(buffer.lookup('odom', 'base', 0)[:3, 3], [0.0, 3.0, 0.0])


def test_the_cache_is_pruned_per_frame():
    buffer = TfBuffer(cache_time_s=1.0, extrapolation_tolerance_ns=0)
    for seconds in range(6):
        buffer.set_transform('world', 'base', seconds * S, _transform(0, (seconds, 0, 0)))
    assert buffer.lookup('world', 'base', 3 * S + S // 2) is None
    assert buffer.lookup('world', 'base', 4 * S + S // 2)[0, 3] == pytest.approx(4.5)


def test_unknown_disconnected_and_invalid_frames():
    buffer = TfBuffer()
    buffer.set_transform('/world', 'base', S, np.eye(4))
    buffer.set_transform('map', 'robot', S, np.eye(4))
    assert buffer.lookup('world', 'robot', S) is None
    assert buffer.lookup('world', 'nowhere', S) is None
    np.testing.assert_allclose(buffer.lookup('world', '/base', S), np.eye(4))
    with pytest.raises(ValueError, match='rigid'):
        buffer.set_transform('world', 'base', S, np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match='rigid'):
        buffer.set_transform('world', 'base', S, np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match='different'):
        buffer.set_transform('base', 'base', S, np.eye(4))


def test_a_new_parent_replaces_the_history():
    buffer = TfBuffer()
    buffer.set_transform('a', 'camera', S, _transform(0, (1, 0, 0)))
    buffer.set_transform('b', 'camera', 2 * S, _transform(0, (0, 1, 0)))
    assert buffer.lookup('a', 'camera', S) is None
    np.testing.assert_allclose(buffer.lookup('b', 'camera', 2 * S)[:3, 3], [0, 1, 0])
    buffer.clear()
    assert buffer.frames() == []


@pytest.mark.skipif(importlib.util.find_spec('tf2_msgs') is None,
                    reason='tf2_msgs is not importable (tools/build_tf2_msgs.sh builds it)')
def test_listener_looks_up_a_chain_published_on_tf_and_tf_static(make_node, spin_until):
    from tf2_msgs.msg import TFMessage
    from onlineanyseg_ros.ros.conversions.pose import matrix_to_transform_stamped
    from onlineanyseg_ros.ros.qos import tf_qos, tf_static_qos

    broadcaster = make_node('tf_test_broadcaster')
    listener_node = make_node('tf_test_listener')
    T_base_camera = _transform(-np.pi / 2, (0.1, 0.0, 0.4), roll_rad=-np.pi / 2)
    static_publisher = broadcaster.create_publisher(TFMessage, '/tf_static',
                                                    tf_static_qos(depth=1))
    # Published before the listener exists: transient-local must still deliver it.
    static_publisher.publish(TFMessage(transforms=[
        matrix_to_transform_stamped(T_base_camera, 0, 'base', 'camera')]))
    source = make_pose_source(listener_node, use_tf2_ros=False)
    assert source.backend == 'onlineanyseg TfBuffer'
    if importlib.util.find_spec('tf2_ros') is None:
        assert make_pose_source(listener_node).backend == 'onlineanyseg TfBuffer'
    tf_publisher = broadcaster.create_publisher(TFMessage, '/tf', tf_qos())
    nodes = [broadcaster, listener_node]
    assert spin_until(nodes, lambda: tf_publisher.get_subscription_count() > 0)
    poses = {10: _transform(0.0, (1.0, 0.0, 0.0)), 11: _transform(0.4, (3.0, 0.0, 0.0))}
    tf_publisher.publish(TFMessage(transforms=[
        matrix_to_transform_stamped(T, seconds * S, 'world', 'base')
        for seconds, T in poses.items()]))
    stamp_ns = 10 * S + S // 2
    assert spin_until(nodes, lambda: source.lookup('world', 'camera', stamp_ns) is not None)
    expected = _transform(0.2, (2.0, 0.0, 0.0)) @ T_base_camera
    np.testing.assert_allclose(source.lookup('world', 'camera', stamp_ns), expected,
                               atol=1e-9)
    source.clear()
    assert source.lookup('world', 'camera', stamp_ns) is None
