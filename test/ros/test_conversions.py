"""Message <-> numpy conversions: round trips, wire layouts and boundary errors."""

import array
import math

import numpy as np
import pytest

pytest.importorskip('rclpy')
from geometry_msgs.msg import Pose, Quaternion  # noqa: E402, I100, I202
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from onlineanyseg_ros.ros.conversions import camera_info, header, image, markers  # noqa: E402
from onlineanyseg_ros.ros.conversions import pointcloud, pose, quaternion  # noqa: E402

RNG = np.random.default_rng(7)
SAMPLES = {
    'rgb8': RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8),
    'bgr8': RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8),
    'mono8': RNG.integers(0, 256, (5, 7), dtype=np.uint8),
    'mono16': RNG.integers(0, 65536, (5, 7), dtype=np.uint16),
    '16UC1': RNG.integers(0, 65536, (5, 7), dtype=np.uint16),
    '32FC1': RNG.normal(size=(5, 7)).astype(np.float32),
}


def _padded_image(pixels, encoding, padding, big_endian):
    """Build an Image by hand: rows of ``pixels`` in the given byte order plus junk bytes."""
    order = '>' if big_endian else '<'
    height, width = pixels.shape[:2]
    rows = pixels.astype(pixels.dtype.newbyteorder(order)).reshape(height, -1).view(np.uint8)
    junk = np.full((height, padding), 0xAB, dtype=np.uint8)
    data = np.concatenate([rows, junk], axis=1)
    return Image(height=height, width=width, encoding=encoding, is_bigendian=int(big_endian),
                 step=data.shape[1], data=array.array('B', data.tobytes()))


@pytest.mark.parametrize('encoding', sorted(SAMPLES))
def test_image_round_trip_every_encoding(encoding):
    pixels = SAMPLES[encoding]
    msg = image.array_to_image(pixels, encoding, stamp_ns=1_500_000_123, frame_id='cam')
    assert msg.encoding == encoding and msg.is_bigendian == 0
    assert msg.step == pixels.shape[1] * pixels.itemsize * (3 if pixels.ndim == 3 else 1)
    assert len(msg.data) == msg.step * msg.height
    assert header.time_to_ns(msg.header.stamp) == 1_500_000_123
    decoded = image.image_to_array(msg)
    assert decoded.dtype == pixels.dtype and np.array_equal(decoded, pixels)


@pytest.mark.parametrize('encoding', sorted(SAMPLES))
@pytest.mark.parametrize('big_endian', [False, True])
def test_image_decoding_honours_row_padding_and_byte_order(encoding, big_endian):
    pixels = SAMPLES[encoding]
    msg = _padded_image(pixels, encoding, padding=6, big_endian=big_endian)
    decoded = image.image_to_array(msg)
    assert decoded.dtype.isnative
    assert np.array_equal(decoded, pixels)


def test_bigendian_16uc1_depth_becomes_metres():
    millimetres = np.array([[0, 1, 1000], [65535, 258, 4097]], dtype=np.uint16)
    msg = _padded_image(millimetres, '16UC1', padding=2, big_endian=True)
    depth = image.image_to_depth_m(msg)
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth, millimetres.astype(np.float64) / 1000.0, rtol=1e-6)
    depth_tenth_mm = image.image_to_depth_m(msg, depth_scale_m=1e-4)
    np.testing.assert_allclose(depth_tenth_mm, millimetres.astype(np.float64) * 1e-4,
                               rtol=1e-6)


def test_32fc1_depth_invalid_values_become_zero():
    metres = np.array([[1.5, np.nan, np.inf], [-2.0, 0.0, 3.25]], dtype=np.float32)
    depth = image.image_to_depth_m(image.array_to_image(metres, '32FC1'))
    assert np.array_equal(depth, np.array([[1.5, 0, 0], [0, 0, 3.25]], dtype=np.float32))


def test_depth_writer_quantises_16uc1_and_rejects_out_of_range():
    metres = np.array([[0.0, 1.2344, np.nan], [2.0006, -1.0, 65.0]], dtype=np.float32)
    msg = image.depth_m_to_image(metres, encoding='16UC1')
    assert np.array_equal(image.image_to_array(msg), [[0, 1234, 0], [2001, 0, 65000]])
    with pytest.raises(ValueError, match='16UC1'):
        image.depth_m_to_image(np.full((1, 1), 70.0, np.float32), encoding='16UC1')
    with pytest.raises(ValueError, match='mono8'):
        image.depth_m_to_image(metres, encoding='mono8')


def test_bgr8_is_returned_as_rgb():
    rgb = SAMPLES['rgb8']
    bgr_msg = image.array_to_image(np.ascontiguousarray(rgb[..., ::-1]), 'bgr8')
    assert np.array_equal(image.image_to_rgb(bgr_msg), rgb)
    assert np.array_equal(image.image_to_rgb(image.array_to_image(rgb, 'rgb8')), rgb)
    with pytest.raises(ValueError, match='mono8'):
        image.image_to_rgb(image.array_to_image(SAMPLES['mono8'], 'mono8'))


@pytest.mark.parametrize('encoding', ['yuv422', 'rgba8', '8UC3', ''])
def test_unsupported_encoding_error_names_it(encoding):
    msg = Image(height=1, width=1, encoding=encoding, step=4, data=array.array('B', b'1234'))
    with pytest.raises(ValueError, match=repr(encoding)):
        image.image_to_array(msg)
    with pytest.raises(ValueError, match=repr(encoding)):
        image.array_to_image(np.zeros((1, 1), np.uint8), encoding)


def test_size_and_step_mismatches_name_the_encoding():
    good = image.array_to_image(SAMPLES['16UC1'], '16UC1')
    short = Image(height=good.height, width=good.width, encoding='16UC1', step=good.step,
                  data=good.data[:-1])
    with pytest.raises(ValueError, match='16UC1 image data has'):
        image.image_to_array(short)
    narrow = Image(height=good.height, width=good.width, encoding='16UC1',
                   step=good.width * 2 - 1, data=good.data)
    with pytest.raises(ValueError, match='16UC1 image step'):
        image.image_to_array(narrow)
    with pytest.raises(ValueError, match='32FC1'):
        image.array_to_image(SAMPLES['16UC1'], '32FC1')
    with pytest.raises(ValueError, match='rgb8'):
        image.array_to_image(SAMPLES['mono8'], 'rgb8')


def test_mask_labels_round_trip_as_mono16():
    labels = RNG.integers(0, 40, (6, 9)).astype(np.int32)
    labels[0, 0], labels[0, 1] = 65535, 0
    msg = image.labels_to_image(labels, stamp_ns=5, frame_id='depth')
    assert msg.encoding == 'mono16' and msg.header.frame_id == 'depth'
    decoded = image.image_to_labels(msg)
    assert decoded.dtype == np.int32 and np.array_equal(decoded, labels)
    for bad in (labels - 1, labels + 1, labels.astype(np.float32)):
        with pytest.raises(ValueError, match='mask labels'):
            image.labels_to_image(bad)
    with pytest.raises(ValueError, match='32FC1'):
        image.image_to_labels(image.array_to_image(SAMPLES['32FC1'], '32FC1'))


@pytest.mark.parametrize('count', [0, 1, 4])
def test_mask_features_round_trip_as_32fc1(count):
    features = RNG.normal(size=(count, 12)).astype(np.float32)
    msg = image.features_to_image(features)
    assert (msg.encoding, msg.height, msg.width) == ('32FC1', count, 12)
    decoded = image.image_to_features(msg)
    assert decoded.shape == (count, 12) and np.array_equal(decoded, features)
    with pytest.raises(ValueError, match='mono16'):
        image.image_to_features(image.labels_to_image(np.zeros((2, 2), np.int32)))


def test_camera_info_round_trip():
    K = np.array([[525.0, 0.0, 319.5], [0.0, 520.0, 239.5], [0.0, 0.0, 1.0]])
    msg = camera_info.K_to_camera_info(K, 480, 640, stamp_ns=9, frame_id='depth')
    assert (msg.height, msg.width, msg.header.frame_id) == (480, 640, 'depth')
    assert np.array_equal(np.asarray(msg.p).reshape(3, 4)[:, :3], K)
    assert np.array_equal(camera_info.camera_info_to_K(msg), K)
    with pytest.raises(ValueError, match='CameraInfo.k'):
        camera_info.camera_info_to_K(CameraInfo())
    with pytest.raises(ValueError, match='size'):
        camera_info.K_to_camera_info(K, 0, 640)


def _random_rigid(rng):
    q = rng.normal(size=4)
    T = np.eye(4)
    T[:3, :3] = quaternion.quaternion_to_rotation(q / np.linalg.norm(q))
    T[:3, 3] = rng.normal(size=3) * 5.0
    return T


def test_pose_and_transform_round_trips():
    rng = np.random.default_rng(3)
    for _ in range(50):
        T = _random_rigid(rng)
        np.testing.assert_allclose(pose.pose_to_matrix(pose.matrix_to_pose(T)), T, atol=1e-12)
        stamped = pose.matrix_to_pose_stamped(T, 42, 'world')
        assert stamped.header.frame_id == 'world'
        np.testing.assert_allclose(pose.pose_stamped_to_matrix(stamped), T, atol=1e-12)
        transform = pose.matrix_to_transform_stamped(T, 7, 'world', 'camera')
        assert (transform.header.frame_id, transform.child_frame_id) == ('world', 'camera')
        np.testing.assert_allclose(pose.transform_stamped_to_matrix(transform), T,
                                   atol=1e-12)


def test_quaternion_conventions_and_half_turns():
    quarter_turn_z = Pose(orientation=Quaternion(z=math.sqrt(0.5), w=math.sqrt(0.5)))
    T = pose.pose_to_matrix(quarter_turn_z)
    np.testing.assert_allclose(T[:3, :3] @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)
    for axis in np.eye(3):
        half_turn = np.append(axis, 0.0)
        R = quaternion.quaternion_to_rotation(half_turn)
        recovered = quaternion.rotation_to_quaternion(R)
        np.testing.assert_allclose(quaternion.quaternion_to_rotation(recovered), R,
                                   atol=1e-12)
        assert np.isclose(abs(np.dot(recovered, half_turn)), 1.0)


@pytest.mark.parametrize('xyzw', [(0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.1),
                                  (float('nan'), 0.0, 0.0, 1.0), (0.0, 0.0, 1.0, 1.0)])
def test_invalid_quaternions_are_rejected(xyzw):
    x, y, z, w = xyzw
    with pytest.raises(ValueError, match='quaternion'):
        pose.pose_to_matrix(Pose(orientation=Quaternion(x=x, y=y, z=z, w=w)))


def test_non_rigid_matrices_are_rejected():
    scaled = np.diag([2.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match='rigid'):
        pose.matrix_to_pose(scaled)
    with pytest.raises(ValueError, match='rigid'):
        pose.matrix_to_transform_stamped(np.full((4, 4), np.nan), 0, 'a', 'b')


@pytest.mark.parametrize('stamp_ns', [0, 1, 999_999_999, 1_700_000_000_123_456_789, -1,
                                      -1_500_000_000])
def test_time_round_trip(stamp_ns):
    stamp = header.ns_to_time(stamp_ns)
    assert 0 <= stamp.nanosec < 1_000_000_000
    assert header.time_to_ns(stamp) == stamp_ns


def test_time_out_of_int32_range_is_rejected():
    with pytest.raises(ValueError, match='int32'):
        header.ns_to_time(2 ** 31 * 1_000_000_000)


def _instance_points(count):
    xyz = RNG.normal(size=(count, 3))
    colors = RNG.integers(0, 256, (count, 3), dtype=np.uint8)
    ids = RNG.integers(0, 2 ** 32, count, dtype=np.uint64)
    return pointcloud.make_instance_points(xyz, colors, ids), xyz, colors, ids


def test_pointcloud2_layout_and_exact_bytes():
    points, xyz, colors, ids = _instance_points(100)
    msg = pointcloud.points_to_pointcloud2(points, stamp_ns=11, frame_id='world')
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ('x', 0, PointField.FLOAT32, 1), ('y', 4, PointField.FLOAT32, 1),
        ('z', 8, PointField.FLOAT32, 1), ('rgb', 12, PointField.FLOAT32, 1),
        ('instance_id', 16, PointField.UINT32, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 100, 20, 2000)
    assert msg.is_dense and not msg.is_bigendian
    assert bytes(msg.data) == points.tobytes()
    decoded = pointcloud.pointcloud2_to_points(msg)
    assert decoded.tobytes() == points.tobytes()
    np.testing.assert_array_equal(decoded['x'], xyz[:, 0].astype(np.float32))
    assert np.array_equal(pointcloud.unpack_rgb(decoded['rgb']), colors)
    assert np.array_equal(decoded['instance_id'], ids)


def test_rgb_packing_follows_the_rviz_convention():
    packed = pointcloud.pack_rgb(np.array([[255, 0, 128], [1, 2, 3]], dtype=np.uint8))
    assert packed.dtype == np.float32
    assert packed.view(np.uint32).tolist() == [0x00FF0080, 0x00010203]
    as_uint32 = packed.view(np.uint32)
    assert pointcloud.unpack_rgb(as_uint32).tolist() == [[255, 0, 128], [1, 2, 3]]


def test_pointcloud2_with_uint32_rgb_nan_and_empty():
    dtype = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<u4')])
    points = np.zeros(3, dtype=dtype)
    points['x'][1] = np.nan
    msg = pointcloud.points_to_pointcloud2(points)
    assert msg.fields[3].datatype == PointField.UINT32 and not msg.is_dense
    assert pointcloud.pointcloud2_to_points(msg).tobytes() == points.tobytes()
    empty = pointcloud.points_to_pointcloud2(_instance_points(0)[0])
    assert empty.width == 0 and pointcloud.pointcloud2_to_points(empty).shape == (0,)


def test_pointcloud2_decoding_handles_bigendian_padding_and_organized_clouds():
    wire = np.dtype({'names': ['x', 'intensity'], 'formats': ['>f4', '>u2'],
                     'offsets': [0, 8], 'itemsize': 12})
    points = np.zeros(6, dtype=wire)
    points['x'] = np.arange(6, dtype=np.float32) * 1.5
    points['intensity'] = np.arange(6) * 1000
    rows = points.view(np.uint8).reshape(2, 36)
    data = np.concatenate([rows, np.zeros((2, 4), np.uint8)], axis=1)
    msg = PointCloud2(height=2, width=3, is_bigendian=True, point_step=12, row_step=40,
                      fields=[PointField(name='x', offset=0, datatype=PointField.FLOAT32,
                                         count=1),
                              PointField(name='intensity', offset=8,
                                         datatype=PointField.UINT16, count=1)],
                      data=array.array('B', data.tobytes()))
    decoded = pointcloud.pointcloud2_to_points(msg)
    assert decoded.shape == (6,)
    assert np.array_equal(decoded['x'], points['x']) and decoded['x'].dtype.isnative
    assert np.array_equal(decoded['intensity'], points['intensity'])
    msg.row_step = 30
    with pytest.raises(ValueError, match='row_step'):
        pointcloud.pointcloud2_to_points(msg)


def _instances(ids):
    count = len(ids)
    centers = np.arange(count * 3, dtype=np.float64).reshape(count, 3)
    return {'instance_ids': ids, 'centers': centers, 'sizes': np.ones((count, 3)) * 0.5,
            'colors': np.full((count, 3), 255, np.uint8), 'labels': [f'obj{i}' for i in ids]}


def test_instance_markers_have_stable_ids_and_namespaces():
    first = markers.instance_markers(**_instances([3, 17, 250]), frame_id='world',
                                     namespace='map')
    assert len(first.markers) == 6
    boxes = {m.id: m for m in first.markers if m.ns == 'map/boxes'}
    texts = {m.id: m for m in first.markers if m.ns == 'map/labels'}
    assert set(boxes) == set(texts) == {3, 17, 250}
    assert all(m.type == Marker.CUBE and m.action == Marker.ADD for m in boxes.values())
    assert all(m.type == Marker.TEXT_VIEW_FACING for m in texts.values())
    assert texts[17].text == '17 obj17' and boxes[17].header.frame_id == 'world'
    assert boxes[17].pose.position.y == 4.0 and boxes[17].color.r == 1.0
    assert texts[17].pose.position.z > boxes[17].pose.position.z
    # Same instance, different call, other instances around it: same marker ids.
    second = markers.instance_markers(**_instances([250, 9]), namespace='map')
    assert {(m.ns, m.id) for m in second.markers} == {
        ('map/boxes', 250), ('map/labels', 250), ('map/boxes', 9), ('map/labels', 9)}


def test_clear_first_and_deletions():
    array_msg = markers.instance_markers(**_instances([1, 2]), clear_first=True)
    assert array_msg.markers[0].action == Marker.DELETEALL and len(array_msg.markers) == 5
    assert [m.action for m in markers.delete_all_markers().markers] == [Marker.DELETEALL]
    deleted = markers.delete_instance_markers([4, 5], namespace='map')
    assert {(m.ns, m.id, m.action) for m in deleted.markers} == {
        ('map/boxes', 4, Marker.DELETE), ('map/labels', 4, Marker.DELETE),
        ('map/boxes', 5, Marker.DELETE), ('map/labels', 5, Marker.DELETE)}


def test_instance_marker_input_errors():
    with pytest.raises(ValueError, match='unique'):
        markers.instance_markers(**_instances([1, 1]))
    with pytest.raises(ValueError, match='marker ids'):
        markers.instance_markers(**_instances([2 ** 31]))
    bad_labels = dict(_instances([1, 2]), labels=['only one'])
    with pytest.raises(ValueError, match='labels'):
        markers.instance_markers(**bad_labels)
