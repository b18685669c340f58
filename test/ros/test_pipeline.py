"""Both nodes in one process (`onlineanyseg pipeline`): start, map a stream, stop, bad input."""

import os
import pathlib
import signal
import subprocess
import sys

import pytest
import yaml

rclpy = pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402, I100, I202
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402

from onlineanyseg_ros.commands.pipeline import ros_argv  # noqa: E402
from onlineanyseg_ros.data import synthetic  # noqa: E402
from onlineanyseg_ros.ros.conversions.camera_info import K_to_camera_info  # noqa: E402
from onlineanyseg_ros.ros.conversions.image import (array_to_image,  # noqa: E402
                                                    depth_m_to_image)
from onlineanyseg_ros.ros.conversions.pose import matrix_to_pose_stamped  # noqa: E402
from onlineanyseg_ros.ros.qos import keyframe_qos, sensor_input_qos  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
WIDTH, HEIGHT, NUM_FRAMES = 160, 120, 6
PERIOD_NS = 100_000_000
WORLD, CAMERA = 'map', 'camera_optical'
START_TIMEOUT_S = 90.0
STEP_TIMEOUT_S = 30.0
LATCHED_DEEP = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)
SEGMENTATION_PARAMETERS = {'publish_rate_hz': 5.0, 'segmenter.min_mask_pixels': 100,
                           'segmenter.min_mask_points': 10,
                           'segmenter.min_voxels_after_boundary': 20}
PERCEPTION_PARAMETERS = {'pose_source': 'topic', 'keyframe_every_n_frames': 1}


def _params_file(tmp_path, perception, segmentation):
    path = tmp_path / 'params.yaml'
    path.write_text(yaml.safe_dump({
        'perception_node': {'ros__parameters': perception},
        'segmentation_node': {'ros__parameters': segmentation}}))
    return str(path)


def _environment(tmp_path):
    """Inherit the test's DDS settings; no CLIP weights in an empty Hugging Face cache."""
    cache = tmp_path / 'hf_cache'
    cache.mkdir(exist_ok=True)
    return dict(os.environ, PYTHONUNBUFFERED='1', HF_HOME=str(cache),
                HF_HUB_CACHE=str(cache / 'hub'), OMP_NUM_THREADS='1')


def test_ros_argv_passes_the_params_file_and_ros_arguments():
    assert ros_argv('p.yaml', ['--', '-r', 'query:=/ask']) == [
        'onlineanyseg-pipeline', '--ros-args', '--params-file', 'p.yaml', '-r', 'query:=/ask']
    assert ros_argv('', ['--ros-args', '-p', 'a:=1']) == [
        'onlineanyseg-pipeline', '--ros-args', '-p', 'a:=1']


def test_cli_reports_a_bad_parameter_in_one_line(tmp_path):
    params = _params_file(tmp_path, PERCEPTION_PARAMETERS, {'segmenter.voxel_size_m': 5.0})
    result = subprocess.run([sys.executable, '-m', 'onlineanyseg_ros.cli', 'pipeline',
                             '--params-file', params], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env=_environment(tmp_path))
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr
    lines = [line for line in result.stderr.splitlines() if 'voxel_size_m' in line]
    assert len(lines) == 1 and 'parameter segmenter.voxel_size_m' in lines[0], result.stderr


class StreamProbe:
    """Publishes a camera stream to the pipeline and records what comes back."""

    def __init__(self, make_node):
        self.node = make_node('pipeline_probe')
        qos = sensor_input_qos()
        self.color = self.node.create_publisher(Image, 'color/image', qos)
        self.depth = self.node.create_publisher(Image, 'depth/image', qos)
        self.info = self.node.create_publisher(CameraInfo, 'depth/camera_info', qos)
        self.pose = self.node.create_publisher(PoseStamped, 'camera_pose', qos)
        self.keyframes, self.clouds, self.statuses = [], [], {}
        self.subscriptions = [
            self.node.create_subscription(PoseStamped, 'keyframe/pose', self.keyframes.append,
                                          keyframe_qos()),
            self.node.create_subscription(PointCloud2, 'instances/cloud', self.clouds.append,
                                          LATCHED_DEEP),
            self.node.create_subscription(DiagnosticArray, 'diagnostics', self._on_diagnostics,
                                          keyframe_qos())]

    def _on_diagnostics(self, array):
        for status in array.status:
            self.statuses[status.name] = {pair.key: pair.value for pair in status.values}

    def matched(self):
        publishers = (self.color, self.depth, self.info, self.pose)
        return (all(publisher.get_subscription_count() > 0 for publisher in publishers)
                and all(sub.get_publisher_count() > 0 for sub in self.subscriptions))

    def publish_frame(self, stamp_ns, view, K, T_world_camera):
        self.pose.publish(matrix_to_pose_stamped(T_world_camera, stamp_ns, WORLD))
        self.info.publish(K_to_camera_info(K, HEIGHT, WIDTH, stamp_ns, CAMERA))
        self.color.publish(array_to_image(view.color, 'rgb8', stamp_ns, CAMERA))
        self.depth.publish(depth_m_to_image(view.depth, stamp_ns, CAMERA))

    def integrated(self):
        status = self.statuses.get('onlineanyseg: segmentation', {})
        return int(status.get('frames_integrated', 0))


def test_pipeline_runs_both_nodes_in_one_process_and_maps_a_stream(tmp_path, make_node,
                                                                   spin_until):
    config = synthetic.SyntheticSceneConfig(num_frames=NUM_FRAMES, width=WIDTH, height=HEIGHT,
                                            focal_px=130.0, revolutions=0.1)
    scene = synthetic.build_scene(config)
    poses = synthetic.camera_trajectory(config)
    K = synthetic.intrinsics(config)
    params = _params_file(tmp_path, PERCEPTION_PARAMETERS, SEGMENTATION_PARAMETERS)
    process = subprocess.Popen(
        [sys.executable, '-m', 'onlineanyseg_ros.ros.pipeline', '--ros-args', '--params-file',
         params], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_environment(tmp_path))
    try:
        probe = StreamProbe(make_node)
        assert spin_until([probe.node], probe.matched, START_TIMEOUT_S), 'pipeline not found'
        # Topic matching can come before the node names are discovered: wait for both.
        assert spin_until([probe.node], lambda: {'perception_node', 'segmentation_node'} <= set(
            probe.node.get_node_names()), START_TIMEOUT_S), probe.node.get_node_names()
        for index in range(NUM_FRAMES):
            view = synthetic.render_frame(scene, config, poses[index], index)
            probe.publish_frame((index + 1) * PERIOD_NS, view, K, poses[index])
            assert spin_until([probe.node], lambda: len(probe.keyframes) > index,
                              STEP_TIMEOUT_S), f'no keyframe for frame {index}'
        assert spin_until([probe.node], lambda: probe.integrated() == NUM_FRAMES,
                          STEP_TIMEOUT_S), probe.statuses
        assert spin_until([probe.node], lambda: probe.clouds and probe.clouds[-1].width > 0,
                          STEP_TIMEOUT_S)
        assert probe.clouds[-1].header.frame_id == WORLD
        status = probe.statuses['onlineanyseg: segmentation']
        assert int(status['process_rss_bytes']) > 0 and float(status['lift.p50_ms']) > 0
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert 'Traceback' not in output
