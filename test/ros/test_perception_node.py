"""Perception node over real rclpy + DDS: keyframe bundles, pose sources, bad input."""

import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
tf2_msgs = pytest.importorskip('tf2_msgs.msg')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402, I100, I202
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.impl.rcutils_logger import RcutilsLogger  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from onlineanyseg_ros.data import synthetic  # noqa: E402, I100
from onlineanyseg_ros.ros import perception_node  # noqa: E402
from onlineanyseg_ros.ros.conversions.camera_info import K_to_camera_info  # noqa: E402
from onlineanyseg_ros.ros.conversions.header import time_to_ns  # noqa: E402
from onlineanyseg_ros.ros.conversions.image import (array_to_image,  # noqa: E402
                                                    depth_m_to_image, image_to_array,
                                                    image_to_depth_m, image_to_features,
                                                    image_to_labels, image_to_rgb)
from onlineanyseg_ros.ros.conversions.pose import (matrix_to_pose_stamped,  # noqa: E402
                                                   matrix_to_transform_stamped,
                                                   pose_stamped_to_matrix)
from onlineanyseg_ros.ros.qos import keyframe_qos, sensor_input_qos, tf_qos  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORLD, CAMERA = 'map', 'camera_optical'
PERIOD_NS = 100_000_000
FEATURE_DIM = 8
WAIT_S = 15.0


@pytest.fixture(scope='module')
def scene_frames():
    """Return (K, [(color, depth)]) of 3 small synthetic views."""
    config = synthetic.SyntheticSceneConfig(num_frames=3, width=320, height=240,
                                            focal_px=260.0, revolutions=0.1)
    scene = synthetic.build_scene(config)
    views = [synthetic.render_frame(scene, config, T) for T in
             synthetic.camera_trajectory(config)]
    return synthetic.intrinsics(config), [(view.color, view.depth) for view in views]


class FakeEmbedder:
    """Stands in for CLIP: row k-1 of the features is filled with k."""

    def embed_masks(self, color, labels):
        rows = int(labels.max())
        return np.repeat(np.arange(1, rows + 1, dtype=np.float32)[:, None], FEATURE_DIM, 1)


@pytest.fixture
def no_clip(monkeypatch):
    """Make the node find no CLIP weights without importing open_clip."""
    monkeypatch.setattr(perception_node, 'find_clip_weights', lambda config: (None, 'nowhere'))


@pytest.fixture
def warnings_logged(monkeypatch):
    """Record every warning message logged through rclpy loggers."""
    messages = []
    original = RcutilsLogger.warning

    def record(logger, message, **kwargs):
        messages.append(message)
        return original(logger, message, **kwargs)

    monkeypatch.setattr(RcutilsLogger, 'warning', record)
    return messages


class Probe:
    """Test node: publishes the node's inputs, records every keyframe topic."""

    def __init__(self, make_node):
        self.node = make_node('perception_probe')
        qos = sensor_input_qos('reliable', depth=50)
        self.color = self.node.create_publisher(Image, 'color/image', qos)
        self.depth = self.node.create_publisher(Image, 'depth/image', qos)
        self.info = self.node.create_publisher(CameraInfo, 'depth/camera_info', qos)
        self.pose = self.node.create_publisher(PoseStamped, 'camera_pose', qos)
        self.tf = self.node.create_publisher(tf2_msgs.TFMessage, '/tf', tf_qos())
        self.received = {part: [] for part in perception_node.KEYFRAME_PARTS}
        self.diagnostics = []
        self.node.create_subscription(DiagnosticArray, 'diagnostics', self.diagnostics.append,
                                      keyframe_qos())
        self.subscriptions = []
        for part, received in self.received.items():
            kind = (PoseStamped if part == 'pose' else CameraInfo if part == 'camera_info'
                    else Image)
            self.subscriptions.append(self.node.create_subscription(
                kind, f'keyframe/{part}', received.append, keyframe_qos(depth=50)))

    def matched(self, tf=False):
        """Return whether every input and keyframe topic matched the node under test."""
        inputs = (self.color, self.depth, self.info, self.tf if tf else self.pose)
        return (all(publisher.get_subscription_count() > 0 for publisher in inputs)
                and all(subscription.get_publisher_count() > 0
                        for subscription in self.subscriptions))

    def stamps(self, part):
        return [time_to_ns(msg.header.stamp) for msg in self.received[part]]

    def bundles(self):
        return min(len(received) for received in self.received.values())


class Harness:
    """The node under test and the probe in one context, with paced publishing."""

    def __init__(self, rclpy_context, make_node, spin_until, overrides, pose_topic=True):
        self.spin_until = spin_until
        self.probe = Probe(make_node)
        self.node = perception_node.PerceptionNode(
            context=rclpy_context,
            parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        self.nodes = [self.node, self.probe.node]
        assert spin_until(self.nodes, lambda: self.probe.matched(tf=not pose_topic)), \
            'discovery timed out'

    def spin(self, predicate, timeout_s=WAIT_S):
        return self.spin_until(self.nodes, predicate, timeout_s)

    def received_images(self):
        counters = self.node._queue.counters
        return counters.received_color + counters.received_depth

    def publish_frame(self, stamp_ns, color, depth, K, color_encoding='rgb8', info=True):
        """Publish camera_info, colour and depth of one frame; wait until both arrived."""
        probe = self.probe
        before = self.received_images()
        if info:
            probe.info.publish(K_to_camera_info(K, depth.shape[0], depth.shape[1], stamp_ns,
                                                CAMERA))
        probe.color.publish(array_to_image(color, color_encoding, stamp_ns, CAMERA))
        probe.depth.publish(depth_m_to_image(depth, stamp_ns, CAMERA, encoding='16UC1'))
        expected = before + (1 if color_encoding in ('rgb8', 'bgr8') else 0) + 1
        assert self.spin(lambda: self.received_images() >= expected), 'images not received'

    def publish_pose(self, stamp_ns, T_world_camera, corrupt=False):
        msg = matrix_to_pose_stamped(T_world_camera, stamp_ns, WORLD)
        if corrupt:
            msg.pose.position.y = float('nan')
        self.probe.pose.publish(msg)

    def destroy(self):
        self.node.destroy_node()


@pytest.fixture
def harness(rclpy_context, make_node, spin_until, no_clip):
    created = []

    def create(overrides, pose_topic=True):
        created.append(Harness(rclpy_context, make_node, spin_until, overrides, pose_topic))
        return created[-1]

    yield create
    for item in created:
        item.destroy()


def _translation(x):
    T = np.eye(4)
    T[0, 3] = x
    return T


def test_tf_poses_yield_bundles_with_identical_stamps(harness, scene_frames, monkeypatch):
    monkeypatch.setattr(perception_node, 'find_clip_weights', lambda config: ('w', 'w'))
    monkeypatch.setattr(perception_node, 'load_clip_embedder', lambda config: FakeEmbedder())
    test = harness({'pose_source': 'tf', 'world_frame': WORLD, 'keyframe_every_n_frames': 4},
                   pose_topic=False)
    K, views = scene_frames
    poses = synthetic.camera_trajectory(synthetic.SyntheticSceneConfig(num_frames=9))
    stamps = [(1 + i) * PERIOD_NS for i in range(9)]
    for i, stamp_ns in enumerate(stamps):
        transform = matrix_to_transform_stamped(poses[i], stamp_ns, WORLD, CAMERA)
        test.probe.tf.publish(tf2_msgs.TFMessage(transforms=[transform]))
        color, depth = views[i % len(views)]
        test.publish_frame(stamp_ns, color, depth, K)
    assert test.spin(lambda: test.probe.bundles() >= 3)
    expected = [stamps[0], stamps[4], stamps[8]]
    for part in perception_node.KEYFRAME_PARTS:
        assert test.probe.stamps(part) == expected, part
    received = test.probe.received
    for index, frame in zip((0, 4, 8), range(3)):
        color, depth = views[index % len(views)]
        assert np.array_equal(image_to_rgb(received['color'][frame]), color)
        assert np.allclose(image_to_depth_m(received['depth'][frame]), depth, atol=6e-4)
        labels = image_to_labels(received['masks'][frame])
        features = image_to_features(received['mask_features'][frame])
        assert labels.shape == depth.shape and labels.max() >= 2
        assert features.shape == (labels.max(), FEATURE_DIM)
        assert np.array_equal(features[:, 0], np.arange(1, labels.max() + 1))
        assert np.allclose(pose_stamped_to_matrix(received['pose'][frame]), poses[index],
                           atol=1e-9)
        assert received['pose'][frame].header.frame_id == WORLD
        assert np.allclose(np.reshape(received['camera_info'][frame].k, (3, 3)), K)
        assert received['masks'][frame].header.frame_id == CAMERA
    assert test.node.skip_counts == {}

    def diagnostics_values():
        return {value.key: value.value for message in test.probe.diagnostics[-1:]
                for value in message.status[0].values}

    assert test.spin(lambda: diagnostics_values().get('keyframes') == '3')
    values = diagnostics_values()
    assert values['frames.valid'] == '9' and values['semantic_features'] == 'on'
    for stage in ('sync_wait', 'masks', 'clip', 'publish'):
        assert float(values[f'{stage}.p95_ms']) >= float(values[f'{stage}.p50_ms']) >= 0.0


def test_pose_topic_interpolates_and_motion_picks_keyframes(harness, scene_frames,
                                                            warnings_logged):
    test = harness({'pose_source': 'topic', 'keyframe_every_n_frames': 0,
                    'keyframe_min_translation_m': 0.05})
    K, views = scene_frames
    # Poses only at even frames, 0.02 m per frame: odd frames are interpolated, and the
    # camera has moved 0.05 m or more from the last keyframe at frames 3 and 6.
    for i in range(7):
        stamp_ns = (1 + i) * PERIOD_NS
        if i % 2 == 0:
            test.publish_pose(stamp_ns, _translation(0.02 * i))
        test.publish_frame(stamp_ns, *views[i % len(views)], K)
    assert test.spin(lambda: test.probe.bundles() >= 3)
    expected = [PERIOD_NS, 4 * PERIOD_NS, 7 * PERIOD_NS]
    for part in perception_node.KEYFRAME_PARTS:
        assert test.probe.stamps(part) == expected, part
    keyframe_x = [msg.pose.position.x for msg in test.probe.received['pose']]
    assert keyframe_x == pytest.approx([0.0, 0.06, 0.12])
    features = test.probe.received['mask_features'][0]
    assert (features.height, features.width) == (0, 0)
    assert image_to_array(features).shape == (0, 0)
    semantic_off = [m for m in warnings_logged if 'semantic term off' in m]
    assert len(semantic_off) == 1
    assert test.node.skip_counts == {}


def _kind_logged(messages, kind):
    return sum(message.endswith(f': {kind})') for message in messages)


def test_bad_input_is_counted_logged_once_and_node_keeps_running(
        harness, scene_frames, warnings_logged):
    test = harness({'pose_source': 'topic', 'keyframe_every_n_frames': 1})
    K, views = scene_frames
    color, depth = views[0]

    def frame(i, nan_pose=False, **kwargs):
        test.publish_pose(i * PERIOD_NS, _translation(0.0), corrupt=nan_pose)
        test.publish_frame(i * PERIOD_NS, kwargs.pop('color', color), depth, K, **kwargs)
        # Let the timer take the frame first: a stamp going back discards pending frames.
        assert test.spin(lambda: len(test.node._queue) == 0)

    frame(1)                                           # good
    frame(2, nan_pose=True)                            # NaN pose
    frame(3, color_encoding='mono8', color=color[..., 0])  # unknown colour encoding
    frame(4, color_encoding='mono8', color=color[..., 0])  # the same again: logged once
    frame(5, color=np.ascontiguousarray(color[::2, ::2]))  # colour/depth size mismatch
    frame(6)                                           # good
    frame(2)                                           # stamp went backwards
    frame(7)                                           # good
    assert test.spin(lambda: test.probe.bundles() >= 4)
    assert test.probe.stamps('masks') == [s * PERIOD_NS for s in (1, 6, 2, 7)]
    counts = test.node.skip_counts
    for kind, count in [('bad_pose_message', 1), ('invalid_pose', 1), ('bad_encoding', 2),
                        ('size_mismatch', 1), ('time_jump', 1)]:
        assert counts.get(kind) == count, (kind, counts)
        assert _kind_logged(warnings_logged, kind) == 1, kind
    # The depth images left without their rejected colour images are counted too.
    assert counts.get('unmatched_depth') == 2


def test_frames_wait_for_camera_info_then_are_processed(harness, scene_frames):
    test = harness({'pose_source': 'topic', 'keyframe_every_n_frames': 1,
                    'pose_timeout_s': 10.0})
    K, views = scene_frames
    for i in (1, 2):
        test.publish_pose(i * PERIOD_NS, _translation(0.0))
        test.publish_frame(i * PERIOD_NS, *views[0], K, info=False)
    assert not test.spin(lambda: test.probe.bundles() > 0, timeout_s=0.5)
    test.probe.info.publish(K_to_camera_info(K, 240, 320, 2 * PERIOD_NS, CAMERA))
    assert test.spin(lambda: test.probe.bundles() >= 2)
    assert test.probe.stamps('depth') == [PERIOD_NS, 2 * PERIOD_NS]


def test_frames_without_camera_info_or_pose_time_out_and_are_counted(
        harness, scene_frames, warnings_logged):
    test = harness({'pose_source': 'topic', 'pose_timeout_s': 0.2})
    K, views = scene_frames
    for i in (1, 2):
        test.publish_pose(i * PERIOD_NS, _translation(0.0))
        test.publish_frame(i * PERIOD_NS, *views[0], K, info=False)
    assert test.spin(lambda: test.node.skip_counts.get('no_camera_info') == 2)
    # With camera_info but no pose at or after its stamp, a frame waits, then is dropped.
    test.publish_frame(3 * PERIOD_NS, *views[0], K)
    assert test.spin(lambda: test.node.skip_counts.get('pose_timeout') == 1)
    assert test.probe.bundles() == 0
    assert _kind_logged(warnings_logged, 'no_camera_info') == 1
    assert _kind_logged(warnings_logged, 'pose_timeout') == 1


@pytest.mark.parametrize('overrides, message', [
    ({'mask_generator': 'cropformer'}, r'cropformer mask generator: .*detectron2'),
    ({'clip_checkpoint': '/nonexistent/clip.bin'}, r'clip_checkpoint: .*/nonexistent/clip.bin'),
])
def test_a_model_that_fails_to_load_fails_the_start(rclpy_context, overrides, message):
    with pytest.raises(perception_node.NodeStartError, match=message):
        perception_node.PerceptionNode(
            context=rclpy_context,
            parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])


def test_main_reports_a_bad_parameter_in_one_line(capfd):
    argv = ['perception_node', '--ros-args', '-p', 'device:=gpu0']
    assert perception_node.main(argv) == 1
    errors = capfd.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and 'parameter device' in errors[0] and 'gpu0' in errors[0]


def _node_command(*parameters):
    command = [sys.executable, '-m', 'onlineanyseg_ros.ros.perception_node', '--ros-args']
    for parameter in parameters:
        command += ['-p', parameter]
    return command


def test_subprocess_starts_publishes_and_rejects_an_invalid_parameter(
        make_node, spin_until, scene_frames):
    failed = subprocess.run(_node_command('sync_tolerance_ms:=-3.0'), cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0
    assert 'sync_tolerance_ms' in failed.stderr and 'Traceback' not in failed.stderr
    process = subprocess.Popen(_node_command('pose_source:=topic', 'keyframe_every_n_frames:=1'),
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    try:
        probe = Probe(make_node)
        assert spin_until([probe.node], probe.matched, 90.0), 'node not discovered'
        K, views = scene_frames
        color, depth = views[1]
        # A message sent while discovery is still one-sided can be lost: send frames with
        # new stamps until a bundle is back.
        for stamp_ns in range(PERIOD_NS, 60 * PERIOD_NS, PERIOD_NS):
            probe.pose.publish(matrix_to_pose_stamped(_translation(1.0), stamp_ns, WORLD))
            probe.info.publish(K_to_camera_info(K, 240, 320, stamp_ns, CAMERA))
            probe.color.publish(array_to_image(color[..., ::-1].copy(), 'bgr8', stamp_ns,
                                               CAMERA))
            probe.depth.publish(depth_m_to_image(depth, stamp_ns, CAMERA))
            if spin_until([probe.node], lambda: probe.bundles() >= 1, 0.5):
                break
        assert spin_until([probe.node], lambda: probe.bundles() >= 1, 5.0)
        first = probe.stamps('masks')[0]
        assert all(probe.stamps(part)[0] == first for part in probe.received)
        assert np.array_equal(image_to_rgb(probe.received['color'][0]), color)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert 'Traceback' not in output
    assert 'ready: masks geometric' in output
