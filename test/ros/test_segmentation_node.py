"""The segmentation node over real rclpy + DDS: map quality, bad input, services, query."""

import pathlib
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.executors import MultiThreadedExecutor  # noqa: E402, I202
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
import torch  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from onlineanyseg_ros.core.config import SegmenterConfig  # noqa: E402
from onlineanyseg_ros.core.segmenter import OnlineSegmenter  # noqa: E402
from onlineanyseg_ros.core.types import MaskObservation, RgbdFrame  # noqa: E402
from onlineanyseg_ros.data import synthetic  # noqa: E402
from onlineanyseg_ros.eval.ap import average_precision, evaluate_scene  # noqa: E402
from onlineanyseg_ros.perception import clip_embedder  # noqa: E402
from onlineanyseg_ros.perception.simulated import (SimulatedMaskConfig,  # noqa: E402
                                                   SimulatedMaskGenerator)
from onlineanyseg_ros.ros import segmentation_node  # noqa: E402
from onlineanyseg_ros.ros.conversions.camera_info import K_to_camera_info  # noqa: E402
from onlineanyseg_ros.ros.conversions.header import time_to_ns  # noqa: E402
from onlineanyseg_ros.ros.conversions.image import (array_to_image,  # noqa: E402
                                                    depth_m_to_image, features_to_image,
                                                    labels_to_image)
from onlineanyseg_ros.ros.conversions.pointcloud import pointcloud2_to_points  # noqa: E402
from onlineanyseg_ros.ros.conversions.pose import matrix_to_pose_stamped  # noqa: E402
from onlineanyseg_ros.ros.pipeline import NodeStartError  # noqa: E402
from onlineanyseg_ros.ros.qos import keyframe_qos  # noqa: E402
from onlineanyseg_ros.ros.segmentation_node import (KEYFRAME_TOPICS,  # noqa: E402
                                                    SegmentationNode)

WIDTH, HEIGHT, NUM_FRAMES = 160, 120, 16
FEATURE_DIM = 32
# Mask thresholds scaled to the small images (the defaults are for 640x480) and a coarser
# lattice, so the test stays fast on two CPU cores.
SEGMENTER_OVERRIDES = {'min_mask_pixels': 100, 'min_mask_points': 10,
                       'min_voxels_after_boundary': 20, 'outlier_neighbors': 0,
                       'voxel_size_m': 0.04, 'query_radius_m': 0.05}
STEP_TIMEOUT_S = 30.0
WORLD, CAMERA = 'map', 'camera_optical'
# Compatible with the latched map outputs; deep enough to keep every message of a test.
LATCHED_DEEP = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope='module', autouse=True)
def single_torch_thread():
    # Two intra-op threads on two busy cores spin against each other (10x slower here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def scene_stream():
    """Render a small synthetic room; return frames, simulated masks and the GT cloud."""
    config = synthetic.SyntheticSceneConfig(num_frames=NUM_FRAMES, width=WIDTH, height=HEIGHT,
                                            focal_px=525.0 * WIDTH / 640, seed=1,
                                            num_objects=8)
    scene = synthetic.build_scene(config)
    poses = synthetic.camera_trajectory(config)
    K = synthetic.intrinsics(config)
    rendered = [synthetic.render_frame(scene, config, poses[i], i) for i in range(NUM_FRAMES)]
    frames = [RgbdFrame(r.color, r.depth, K, poses[i], stamp_ns=(i + 1) * 10 ** 8,
                        frame_index=i) for i, r in enumerate(rendered)]
    categories = {instance.instance_id: instance.class_id for instance in scene.instances}
    masks_config = SimulatedMaskConfig(feature_dim=FEATURE_DIM, min_mask_pixels=100)
    generator = SimulatedMaskGenerator(lambda i: rendered[i].instance, categories,
                                       masks_config, seed=0)
    masks = [generator.generate(frame) for frame in frames]
    gt_points, _, gt_ids = synthetic.sample_ground_truth(scene, config.gt_point_spacing_m)
    return frames, masks, gt_points, synthetic.ground_truth_labels(scene, gt_ids)


def bundle_messages(frame, masks, stamp_ns=None, world=WORLD):
    """Return the six keyframe messages of one frame (masks None = an empty label image)."""
    stamp_ns = frame.stamp_ns if stamp_ns is None else stamp_ns
    height, width = frame.shape
    labels = masks.labels if masks is not None else np.zeros(frame.shape, np.int32)
    features = masks.features if masks is not None and masks.features is not None else \
        np.zeros((int(labels.max()), 0), np.float32)
    return {
        'color': array_to_image(frame.color, 'rgb8', stamp_ns, CAMERA),
        'depth': depth_m_to_image(frame.depth, stamp_ns, CAMERA, '32FC1'),
        'camera_info': K_to_camera_info(frame.K, height, width, stamp_ns, CAMERA),
        'pose': matrix_to_pose_stamped(frame.T_world_camera, stamp_ns, world),
        'masks': labels_to_image(labels, stamp_ns, CAMERA),
        'mask_features': features_to_image(features, stamp_ns, CAMERA),
    }


class Probe:
    """A test node that feeds keyframe bundles and records the node's outputs."""

    def __init__(self, make_node):
        self.node = make_node('segmentation_probe')
        self.publishers = {key: self.node.create_publisher(msg_type, topic, keyframe_qos())
                           for key, (msg_type, topic) in KEYFRAME_TOPICS.items()}
        self.query = self.node.create_publisher(String, 'query', keyframe_qos())
        self.received = {topic: [] for topic in ('instances/cloud', 'instances/markers',
                                                 'query/cloud', 'query/markers')}
        self.subscriptions = []
        for topic in self.received:
            msg_type = PointCloud2 if topic.endswith('cloud') else MarkerArray
            self.subscriptions.append(self.node.create_subscription(
                msg_type, topic, self.received[topic].append, LATCHED_DEEP))

    def matched(self):
        publishers = list(self.publishers.values()) + [self.query]
        return (all(publisher.get_subscription_count() > 0 for publisher in publishers)
                and all(sub.get_publisher_count() > 0 for sub in self.subscriptions))

    def publish(self, messages):
        for key, message in messages.items():
            self.publishers[key].publish(message)

    def latest(self, topic):
        return self.received[topic][-1] if self.received[topic] else None


@pytest.fixture
def make_segmentation_node(rclpy_context, tmp_path, monkeypatch):
    # No CLIP weights anywhere, even on machines whose Hugging Face cache holds them.
    monkeypatch.setattr(clip_embedder, 'find_clip_weights',
                        lambda config: (None, 'an empty test cache'))
    nodes = []

    def create(**parameters):
        values = {'publish_rate_hz': 20.0, 'output_dir': str(tmp_path / 'map')}
        values.update({f'segmenter.{name}': value for name, value in SEGMENTER_OVERRIDES.items()})
        values.update(parameters)
        node = SegmentationNode(context=rclpy_context, parameter_overrides=[
            Parameter(name, value=value) for name, value in values.items()])
        nodes.append(node)
        return node

    yield create
    for node in nodes:
        node.destroy_node()


@pytest.fixture
def setup(make_segmentation_node, make_node, spin_until):
    """Return (segmentation node, probe, spin) with every probe topic matched."""
    node = make_segmentation_node()
    probe = Probe(make_node)

    def spin(predicate, timeout_s=STEP_TIMEOUT_S):
        return spin_until([node, probe.node], predicate, timeout_s)

    assert spin(probe.matched)
    return node, probe, spin


def feed(node, probe, spin, messages, done):
    """Publish one bundle and spin until ``done()`` holds."""
    probe.publish(messages)
    assert spin(done), f'bundle at {time_to_ns(messages["pose"].header.stamp)} ns not handled'


def integrate(node, probe, spin, frame, masks, **kwargs):
    before = node.segmenter.frames_integrated
    feed(node, probe, spin, bundle_messages(frame, masks, **kwargs),
         lambda: node.segmenter.frames_integrated > before)


def _marker_scores(markers):
    """Return {stable id: confidence} from the id/score labels of an instance MarkerArray."""
    scores = {}
    for marker in markers.markers:
        if marker.type == Marker.TEXT_VIEW_FACING and marker.action == Marker.ADD:
            uid, score = marker.text.split()
            scores[int(uid)] = float(score)
    return scores


def _ap50(points, instance_ids, scores, gt_points, gt_labels):
    scene = evaluate_scene(points, instance_ids, scores, gt_points, gt_labels)
    return average_precision([scene])['ap50']


def test_node_map_recovers_objects_like_offline(scene_stream, setup):
    frames, masks, gt_points, gt_labels = scene_stream
    offline = OnlineSegmenter(SegmenterConfig(**SEGMENTER_OVERRIDES), 'cpu')
    for frame, frame_masks in zip(frames, masks):
        # The same input as the bundle carries: labels and features (no mask scores).
        offline.integrate(frame, MaskObservation(frame_masks.labels, frame_masks.features))
    exported = offline.labeled_points()
    offline_ap50 = _ap50(exported.points, exported.instance_ids, exported.scores, gt_points,
                         gt_labels)
    assert offline_ap50 > 0.15

    node, probe, spin = setup
    for frame, frame_masks in zip(frames, masks):
        integrate(node, probe, spin, frame, frame_masks)
    assert node.segmenter.frames_integrated == len(frames)
    last_stamp = frames[-1].stamp_ns

    def final(topic):
        message = probe.latest(topic)
        if isinstance(message, MarkerArray):
            message = message.markers[0] if message.markers else None
        return message is not None and time_to_ns(message.header.stamp) == last_stamp

    assert spin(lambda: final('instances/cloud') and final('instances/markers'))
    cloud = probe.latest('instances/cloud')
    assert cloud.header.frame_id == WORLD
    assert [field.name for field in cloud.fields] == ['x', 'y', 'z', 'rgb', 'instance_id']
    points = pointcloud2_to_points(cloud)
    scores_by_uid = _marker_scores(probe.latest('instances/markers'))
    uids = np.unique(points['instance_id'][points['instance_id'] > 0])
    assert sorted(scores_by_uid) == uids.tolist()
    # Stable ids -> contiguous 1..I for the evaluation, confidences from the labels.
    contiguous = np.searchsorted(uids, points['instance_id']) + 1
    instance_ids = np.where(points['instance_id'] > 0, contiguous, 0)
    xyz = np.stack([points['x'], points['y'], points['z']], axis=1)
    node_ap50 = _ap50(xyz, instance_ids, np.array([scores_by_uid[u] for u in uids.tolist()]),
                      gt_points, gt_labels)
    assert node_ap50 >= 0.8 * offline_ap50, (node_ap50, offline_ap50)

    assert sum(node.diagnostics.counters.values()) == 0, dict(node.diagnostics.counters)


def _bad_bundles(frame, masks):
    """Yield (kind, messages) of one bad bundle per kind, stamps after the frame's."""
    stamp = frame.stamp_ns
    empty = bundle_messages(frame, MaskObservation(np.zeros(frame.shape, np.int32)), stamp + 1)
    yield 'empty_masks', empty
    rows = bundle_messages(frame, masks, stamp + 2)
    rows['mask_features'] = features_to_image(masks.features[:-1], stamp + 2, CAMERA)
    yield 'feature_mismatch', rows
    size = bundle_messages(frame, masks, stamp + 3)
    size['masks'] = labels_to_image(masks.labels[:-8], stamp + 3, CAMERA)
    yield 'size_mismatch', size
    encoding = bundle_messages(frame, masks, stamp + 4)
    encoding['color'].encoding = 'yuv422'
    yield 'bad_encoding', encoding
    pose = bundle_messages(frame, masks, stamp + 5)
    pose['pose'].pose.orientation.w = float('nan')
    yield 'bad_pose', pose


def test_bad_input_is_counted_logged_once_and_keeps_the_map(scene_stream, setup, capfd):
    frames, masks, _, _ = scene_stream
    node, probe, spin = setup
    integrate(node, probe, spin, frames[0], masks[0])
    counters = node.diagnostics.counters
    for kind, messages in _bad_bundles(frames[0], masks[0]):
        for _ in range(2):
            before = counters[kind]
            feed(node, probe, spin, messages, lambda: counters[kind] > before)
            for message in messages.values():
                message.header.stamp.nanosec += 100
    voxels = node.segmenter.num_voxels
    # Time going backwards (bag loop): warned, counted, map kept, the frame integrated.
    integrate(node, probe, spin, frames[1], masks[1], stamp_ns=frames[0].stamp_ns - 5)
    assert counters['time_jump'] == 1
    assert node.segmenter.num_voxels >= voxels > 0
    # The node is alive: a good bundle afterwards is integrated.
    integrate(node, probe, spin, frames[2], masks[2])
    assert node.segmenter.frames_integrated == 5  # 3 good, time jump, 2 empty-mask frames
    assert dict(counters) == {'empty_masks': 2, 'feature_mismatch': 2, 'size_mismatch': 2,
                              'bad_encoding': 2, 'bad_pose': 2, 'time_jump': 1}
    logged = capfd.readouterr().err
    for kind in ('empty_masks', 'feature_mismatch', 'size_mismatch', 'bad_encoding',
                 'bad_pose', 'time_jump'):
        assert logged.count(f'so far: {kind})') == 1, (kind, logged)


def test_incomplete_bundle_expires_and_is_counted(scene_stream, make_segmentation_node,
                                                  make_node, spin_until):
    frames, masks, _, _ = scene_stream
    node = make_segmentation_node(bundle_timeout_s=0.2)
    probe = Probe(make_node)

    def spin(predicate, timeout_s=STEP_TIMEOUT_S):
        return spin_until([node, probe.node], predicate, timeout_s)

    assert spin(probe.matched)
    messages = bundle_messages(frames[0], masks[0])
    del messages['mask_features']
    probe.publish(messages)
    assert spin(lambda: node.diagnostics.counters['bundle_expired'] == 1)
    integrate(node, probe, spin, frames[1], masks[1])
    assert node.segmenter.frames_integrated == 1


def test_time_jump_resets_the_map_when_asked(scene_stream, make_segmentation_node, make_node,
                                             spin_until):
    frames, masks, _, _ = scene_stream
    node = make_segmentation_node(reset_on_time_jump=True)
    probe = Probe(make_node)

    def spin(predicate, timeout_s=STEP_TIMEOUT_S):
        return spin_until([node, probe.node], predicate, timeout_s)

    assert spin(probe.matched)
    integrate(node, probe, spin, frames[0], masks[0])
    integrate(node, probe, spin, frames[1], masks[1])
    assert node.segmenter.frames_integrated == 2
    feed(node, probe, spin, bundle_messages(frames[2], masks[2], stamp_ns=1),
         lambda: node.diagnostics.counters['time_jump'] == 1)
    # The map was emptied, then the looped frame integrated into the new one.
    assert node.segmenter.frames_integrated == 1
    assert spin(lambda: any(array.markers[0].action == Marker.DELETEALL
                            for array in probe.received['instances/markers']
                            if array.markers))


def _call(spin, client, timeout_s=STEP_TIMEOUT_S):
    assert spin(client.service_is_ready)
    future = client.call_async(Trigger.Request())
    assert spin(future.done, timeout_s)
    return future.result()


def test_save_map_writes_loadable_files_and_reset_clears_markers(scene_stream, setup):
    frames, masks, _, _ = scene_stream
    node, probe, spin = setup
    for frame, frame_masks in zip(frames[:6], masks[:6]):
        integrate(node, probe, spin, frame, frame_masks)
    assert spin(lambda: probe.latest('instances/markers') is not None)

    response = _call(spin, probe.node.create_client(Trigger, 'save_map'))
    assert response.success, response.message
    directory = pathlib.Path(response.message)
    assert directory == pathlib.Path(node.config.output_dir).resolve()
    with np.load(directory / 'instances.npz') as saved:
        assert saved['points'].shape[0] == saved['instance_ids'].shape[0] > 0
    restored = OnlineSegmenter(device='cpu')
    restored.load(str(directory))
    assert restored.num_voxels == node.segmenter.num_voxels > 0
    assert restored.frames_integrated == 6

    count = len(probe.received['instances/markers'])
    response = _call(spin, probe.node.create_client(Trigger, 'reset'))
    assert response.success
    assert spin(lambda: len(probe.received['instances/markers']) > count)
    cleared = probe.latest('instances/markers').markers
    assert [marker.action for marker in cleared] == [Marker.DELETEALL]
    assert spin(lambda: probe.latest('instances/cloud').width == 0)
    assert node.segmenter.num_voxels == 0 and node.segmenter.frames_integrated == 0
    # Mapping goes on after the reset.
    integrate(node, probe, spin, frames[6], masks[6])
    assert node.segmenter.num_voxels > 0


def test_query_without_clip_answers_empty_with_a_warning(scene_stream, setup):
    frames, masks, _, _ = scene_stream
    node, probe, spin = setup
    integrate(node, probe, spin, frames[0], masks[0])
    assert not node.query.enabled
    probe.query.publish(String(data='a chair'))
    assert spin(lambda: probe.latest('query/markers') is not None
                and probe.latest('query/cloud') is not None)
    assert [m.action for m in probe.latest('query/markers').markers] == [Marker.DELETEALL]
    assert probe.latest('query/cloud').width == 0
    assert node.diagnostics.counters['query_clip_off'] == 1


def test_missing_clip_checkpoint_fails_the_start(rclpy_context, tmp_path):
    missing = str(tmp_path / 'clip.bin')
    with pytest.raises(NodeStartError, match='clip_checkpoint: .*clip.bin'):
        SegmentationNode(context=rclpy_context,
                         parameter_overrides=[Parameter('clip_checkpoint', value=missing)])


@pytest.mark.parametrize('argument, named', [('device:=gpu0', 'parameter device'),
                                             ('segmenter.voxel_size_m:=5.0',
                                              'parameter segmenter.voxel_size_m'),
                                             ('no_such_parameter:=1', 'no_such_parameter')])
def test_main_reports_a_bad_parameter_in_one_line(capfd, argument, named):
    assert segmentation_node.main(['segmentation_node', '--ros-args', '-p', argument]) == 1
    errors = capfd.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and named in errors[0], errors


def test_query_with_a_text_encoder_publishes_the_best_instances(scene_stream, monkeypatch,
                                                                make_segmentation_node,
                                                                make_node, spin_until):
    frames, masks, _, _ = scene_stream
    wanted = {}
    monkeypatch.setattr(segmentation_node, '_load_text_encoder',
                        lambda config, device, logger: lambda texts: wanted['feature'][None])
    node = make_segmentation_node(query_top_k=2)
    probe = Probe(make_node)

    def spin(predicate, timeout_s=STEP_TIMEOUT_S):
        return spin_until([node, probe.node], predicate, timeout_s)

    assert spin(probe.matched)
    for frame, frame_masks in zip(frames[:8], masks[:8]):
        integrate(node, probe, spin, frame, frame_masks)
    exported = node.exported_map()
    assert exported.num_instances >= 2 and exported.features is not None
    target = exported.num_instances - 1
    wanted['feature'] = exported.features[target]
    probe.query.publish(String(data='the last instance'))
    assert spin(lambda: probe.latest('query/markers') is not None
                and probe.latest('query/cloud') is not None)
    markers = probe.latest('query/markers').markers
    assert markers[0].action == Marker.DELETEALL
    boxes = [marker for marker in markers[1:] if marker.type == Marker.CUBE]
    target_id = int(exported.uids[target]) + 1
    assert len(boxes) == 2 and boxes[0].id == target_id
    assert all(marker.ns.startswith('query/') for marker in markers[1:])
    ids = pointcloud2_to_points(probe.latest('query/cloud'))['instance_id']
    assert set(ids.tolist()) == {box.id for box in boxes}
    assert np.sum(ids == target_id) == np.sum(exported.instance_ids == target + 1)
    assert node.query.last_result.rows[0] == target


def test_parts_keep_arriving_during_a_slow_integration_so_no_bundle_is_lost_unseen(
        scene_stream, make_segmentation_node, make_node, spin_until, monkeypatch,
        rclpy_context):
    # Under a multi-threaded executor (the one-process pipeline) the parts must be taken
    # while a long integration runs: left in their keep-last DDS queues (depth
    # bundle_queue_size) they would be overwritten without a trace. Every bundle is then
    # either integrated or counted as a skip of the bounded ready queue.
    frames, masks, _, _ = scene_stream
    node = make_segmentation_node(bundle_queue_size=2)
    probe = Probe(make_node)
    assert spin_until([node, probe.node], probe.matched, STEP_TIMEOUT_S)
    integrate_frame = node.segmenter.integrate

    def slow_integrate(*args, **kwargs):
        time.sleep(0.3)
        return integrate_frame(*args, **kwargs)

    monkeypatch.setattr(node.segmenter, 'integrate', slow_integrate)

    def accounted():
        return node.segmenter.frames_integrated + sum(node.diagnostics.counters.values())

    executor = MultiThreadedExecutor(num_threads=4, context=rclpy_context)
    executor.add_node(node)
    executor.add_node(probe.node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    sent = 8
    try:
        for index in range(sent):
            probe.publish(bundle_messages(frames[index], masks[index]))
            time.sleep(0.05)
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while accounted() < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # nothing more may arrive
    finally:
        executor.shutdown()
        spinner.join(timeout=10.0)
    counters = dict(node.diagnostics.counters)
    assert accounted() == sent, counters
    assert node.segmenter.frames_integrated >= 2
    assert set(counters) <= {'ready_queue_full'}
