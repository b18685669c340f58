"""Sequence bags: rosbags round trip in both storages, metadata QoS, dropped poses."""

import sys
import types

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
import yaml

from onlineanyseg_ros.core.types import MaskObservation, RgbdFrame
from onlineanyseg_ros.data import bag

HEIGHT, WIDTH = 12, 16
K = np.array([[20.0, 0.0, 7.5], [0.0, 21.0, 5.5], [0.0, 0.0, 1.0]])


def make_frames(count, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        T = np.eye(4)
        T[:3, :3] = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
        T[:3, 3] = rng.normal(size=3)
        depth = rng.uniform(0.3, 4.0, (HEIGHT, WIDTH)).astype(np.float32)
        depth[0, :3] = 0.0  # invalid pixels stay 0 mm
        color = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        frames.append(RgbdFrame(color, depth, K, T, frame_index=index))
    return frames


def keyframe_masks(frame):
    """Masks for even frames; frame 2 has no mask at all (0 feature rows)."""
    if frame.frame_index % 2:
        return None
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.int32)
    if frame.frame_index == 2:
        return MaskObservation(labels, np.zeros((0, 8), dtype=np.float32))
    labels[2:6, 3:9] = 1
    labels[7:, 10:] = 3
    features = np.arange(3 * 8, dtype=np.float32).reshape(3, 8) + frame.frame_index
    return MaskObservation(labels, features)


def decoded(path, topic):
    return [(stamp, bag.deserialize(data, msgtype))
            for _, msgtype, stamp, data in bag.read_bag(path, topics=[topic])]


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_round_trip(tmp_path, storage):
    frames = make_frames(4)
    layout = bag.BagLayout(rate_hz=8.0, start_time_ns=5 * 10 ** 9 + 7)
    out = tmp_path / 'seq'
    summary = bag.write_sequence_bag(frames, out, storage=storage, layout=layout,
                                     keyframe_masks=keyframe_masks, progress=False)
    assert summary['frames_written'] == 4 and summary['keyframes'] == 2
    assert summary['dropped_invalid_pose'] == 0
    stamps = [layout.start_time_ns + i * 125_000_000 for i in range(4)]

    info = bag.bag_info(out)
    assert info['storage'] == storage and info['message_count'] == summary['messages']
    expected_types = {layout.color_topic: 'sensor_msgs/msg/Image',
                      layout.depth_info_topic: 'sensor_msgs/msg/CameraInfo',
                      '/tf': 'tf2_msgs/msg/TFMessage', '/tf_static': 'tf2_msgs/msg/TFMessage',
                      '/camera/pose': 'geometry_msgs/msg/PoseStamped',
                      '/keyframe/masks': 'sensor_msgs/msg/Image'}
    for topic, msgtype in expected_types.items():
        assert info['topics'][topic]['type'] == msgtype
    assert info['topics']['/tf_static']['count'] == 1
    assert info['topics']['/keyframe/mask_features']['count'] == 2

    colors = decoded(out, layout.color_topic)
    assert [stamp for stamp, _ in colors] == stamps
    for frame, (stamp, msg) in zip(frames, colors):
        assert msg.encoding == 'rgb8' and msg.header.frame_id == 'camera_color_optical_frame'
        assert msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec == stamp
        np.testing.assert_array_equal(bag.image_to_array(msg), frame.color)
    for frame, (_, msg) in zip(frames, decoded(out, layout.depth_topic)):
        depth_mm = bag.image_to_array(msg)
        assert msg.encoding == '16UC1' and depth_mm.dtype == np.uint16
        np.testing.assert_array_equal(depth_mm, np.rint(frame.depth * 1000).astype(np.uint16))
        assert not depth_mm[0, :3].any()
    for _, msg in decoded(out, layout.color_info_topic):
        np.testing.assert_array_equal(bag.camera_info_to_K(msg), K)
        assert (msg.height, msg.width) == (HEIGHT, WIDTH)

    tf = decoded(out, '/tf')
    assert [stamp for stamp, _ in tf] == stamps
    for frame, (_, msg) in zip(frames, tf):
        (transform,) = msg.transforms
        assert transform.header.frame_id == 'map'
        assert transform.child_frame_id == 'camera_color_optical_frame'
        np.testing.assert_allclose(bag.transform_to_matrix(transform.transform),
                                   frame.T_world_camera, atol=1e-9)
    for frame, (_, msg) in zip(frames, decoded(out, '/camera/pose')):
        np.testing.assert_allclose(bag.pose_to_matrix(msg.pose), frame.T_world_camera,
                                   atol=1e-9)
    ((static_stamp, static),) = decoded(out, '/tf_static')
    (link,) = static.transforms
    assert static_stamp == layout.start_time_ns and link.child_frame_id == 'camera_link'
    # camera_link's x axis (forward) is the optical z axis.
    T_optical_link = bag.transform_to_matrix(link.transform)
    np.testing.assert_allclose(T_optical_link[:3, 0], [0.0, 0.0, 1.0], atol=1e-12)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_keyframe_bundle(tmp_path, storage):
    frames = make_frames(4)
    out = tmp_path / 'kf'
    bag.write_sequence_bag(frames, out, storage=storage, keyframe_masks=keyframe_masks,
                           progress=False)
    masks = decoded(out, '/keyframe/masks')
    features = decoded(out, '/keyframe/mask_features')
    depth_stamps = [stamp for stamp, _ in decoded(out, '/camera/depth/image_raw')]
    assert [s for s, _ in masks] == [s for s, _ in features] == depth_stamps[0::2]
    for (_, mask_msg), (_, feature_msg), index in zip(masks, features, (0, 2)):
        expected = keyframe_masks(frames[index])
        assert mask_msg.encoding == 'mono16' and feature_msg.encoding == '32FC1'
        np.testing.assert_array_equal(bag.image_to_array(mask_msg), expected.labels)
        assert (feature_msg.height, feature_msg.width) == expected.features.shape
        np.testing.assert_array_equal(bag.image_to_array(feature_msg), expected.features)
    for (_, msg), index in zip(decoded(out, '/keyframe/pose'), (0, 2)):
        np.testing.assert_allclose(bag.pose_to_matrix(msg.pose), frames[index].T_world_camera,
                                   atol=1e-9)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_metadata_is_rosbag2_v9_with_latched_tf_static(tmp_path, storage):
    out = tmp_path / 'meta'
    bag.write_sequence_bag(make_frames(2), out, storage=storage, progress=False)
    meta = yaml.safe_load((out / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['version'] == 9 and meta['storage_identifier'] == storage
    assert isinstance(meta['custom_data'], dict)
    for relative in meta['relative_file_paths']:
        assert (out / relative).is_file()
    topics = {t['topic_metadata']['name']: t for t in meta['topics_with_message_count']}
    assert sum(t['message_count'] for t in topics.values()) == meta['message_count']
    (static_qos,) = topics['/tf_static']['topic_metadata']['offered_qos_profiles']
    assert static_qos['durability'] == 'transient_local'
    assert static_qos['reliability'] == 'reliable' and static_qos['history'] == 'keep_last'
    (tf_qos,) = topics['/tf']['topic_metadata']['offered_qos_profiles']
    assert tf_qos['durability'] == 'volatile'
    for topic in topics.values():
        assert topic['topic_metadata']['type_description_hash'].startswith('RIHS01_')
    assert bag.bag_info(out)['topics']['/tf_static']['qos'][0]['durability'] == 'transient_local'


def test_invalid_poses_are_dropped_and_counted(tmp_path):
    frames = make_frames(5)
    # RgbdFrame checks its pose at construction; the array itself stays mutable.
    frames[1].T_world_camera[0, 3] = np.nan
    frames[3].T_world_camera[:3, :3] *= 2.0
    layout = bag.BagLayout(rate_hz=10.0)
    summary = bag.write_sequence_bag(frames, tmp_path / 'drop', storage='sqlite3',
                                     layout=layout, progress=False)
    assert summary['frames_in'] == 5 and summary['frames_written'] == 3
    assert summary['dropped_invalid_pose'] == 2
    assert summary['topics']['/camera/color/image_raw'] == 3
    stamps = [s for s, _ in decoded(tmp_path / 'drop', '/camera/pose')]
    # The kept frames keep their own time slots: 0, 2 and 4 tenths of a second.
    assert stamps == [layout.start_time_ns + i * 100_000_000 for i in (0, 2, 4)]
    for (_, msg), index in zip(decoded(tmp_path / 'drop', '/tf'), (0, 2, 4)):
        np.testing.assert_allclose(bag.transform_to_matrix(msg.transforms[0].transform),
                                   frames[index].T_world_camera, atol=1e-9)


def test_failed_write_leaves_nothing(tmp_path):
    def bad_masks(frame):
        return MaskObservation(np.zeros((HEIGHT + 1, WIDTH), dtype=np.int32))

    with pytest.raises(ValueError, match='do not match'):
        bag.write_sequence_bag(make_frames(2), tmp_path / 'bad', keyframe_masks=bad_masks,
                               progress=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / 'exists').mkdir()
    with pytest.raises(FileExistsError):
        bag.write_sequence_bag(make_frames(1), tmp_path / 'exists', progress=False)
    with pytest.raises(ValueError, match='storage'):
        bag.write_sequence_bag(make_frames(1), tmp_path / 'x', storage='rosbag1')


def test_layout_validation():
    with pytest.raises(ValueError, match='color_topic'):
        bag.BagLayout(color_topic='camera/color')
    with pytest.raises(ValueError, match='rate_hz'):
        bag.BagLayout(rate_hz=0.0)
    with pytest.raises(ValueError, match='world_frame'):
        bag.BagLayout(world_frame='')
    assert bag.BagLayout(keyframe_namespace='/kf/').keyframe_topic('masks') == '/kf/masks'


def test_image_decoding_handles_row_padding_and_big_endian():
    ts = bag.default_typestore()
    values = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    msg = bag.image_message(ts, values, '16UC1', 1, 'f')
    padded = np.zeros((3, msg.step + 6), dtype=np.uint8)
    padded[:, :msg.step] = np.asarray(msg.data).reshape(3, msg.step)
    big = values.astype('>u2').tobytes()
    for data, step, bigendian, raw in ((padded.ravel(), msg.step + 6, 0, None),
                                       (None, msg.step, 1, big)):
        other = ts.types['sensor_msgs/msg/Image'](
            header=msg.header, height=3, width=4, encoding='16UC1', is_bigendian=bigendian,
            step=step, data=data if raw is None else np.frombuffer(raw, dtype=np.uint8))
        np.testing.assert_array_equal(bag.image_to_array(other), values)


class FakeScanNetSequence(list):
    """Stands in for data.scannet.ScanNetSequence: kept frames, their stems, skipped poses."""

    def __init__(self, root, every=1, max_frames=None):
        super().__init__(make_frames(6)[::every][:max_frames])
        self.frame_indices = [frame.frame_index for frame in self]
        self.stems = [f'{index:05d}' for index in self.frame_indices]
        self.skipped_poses = 1


def test_bag_command(tmp_path, monkeypatch, capsys):
    from onlineanyseg_ros import cli
    from onlineanyseg_ros.perception.precomputed import write_mask_observation

    fake = types.ModuleType('onlineanyseg_ros.data.scannet')
    fake.ScanNetSequence = FakeScanNetSequence
    monkeypatch.setitem(sys.modules, 'onlineanyseg_ros.data.scannet', fake)
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.int32)
    labels[1:4, 1:4] = 1
    write_mask_observation(tmp_path / 'masks', '00002',
                           MaskObservation(labels, np.ones((1, 8), np.float32)))
    out = tmp_path / 'out'
    code = cli.main(['bag', str(tmp_path / 'seq'), str(out), '--storage', 'sqlite3',
                     '--every', '2', '--masks', str(tmp_path / 'masks'), '--no-progress'])
    assert code == 0
    printed = capsys.readouterr().out
    assert '3 written, 1 keyframes, 1 dropped' in printed
    info = bag.bag_info(out)
    assert info['storage'] == 'sqlite3' and info['topics']['/keyframe/masks']['count'] == 1
    # Default rate: the 30 Hz capture over every 2nd frame -> 15 Hz stamps.
    stamps = [s for s, _ in decoded(out, '/camera/color/image_raw')]
    assert np.diff(stamps).tolist() == [round(1e9 / 15), round(2e9 / 15) - round(1e9 / 15)]
    ((_, masks),) = decoded(out, '/keyframe/masks')
    assert masks.header.stamp == decoded(out, '/camera/depth/image_raw')[1][1].header.stamp
    np.testing.assert_array_equal(bag.image_to_array(masks), labels)
    assert cli.main(['bag', str(tmp_path / 'seq'), str(out)]) == 1  # exists: refused
