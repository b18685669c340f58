"""Perception node: colour, depth, camera_info and poses in; keyframe bundles out.

Subscription callbacks only check cheap header fields and enqueue into the ROS-free
``FrameQueue`` (colour/depth paired by stamp, bounded, drops counted). A timer pops the
frames whose pose is known (TF ``world_frame`` <- depth frame, or the ``camera_pose`` topic),
lets ``KeyframeSelector`` pick keyframes, runs the mask generator and the CLIP embedder on
them and publishes ``keyframe/{color,depth,camera_info,pose,masks,mask_features}``, all with
the depth image's stamp. Every bad input is counted and logged (throttled per kind) through
``NodeDiagnostics``; the node keeps running.

Run: ``python -m onlineanyseg_ros.ros.perception_node --ros-args -p pose_source:=topic``.
"""

from collections import deque
import re
import sys
import threading
import time
from typing import Deque, Dict, NamedTuple, Optional

from geometry_msgs.msg import PoseStamped
import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
import torch

from onlineanyseg_ros.core.profiling import latency_summary, StageTimer
from onlineanyseg_ros.core.types import MaskObservation, RgbdFrame
from onlineanyseg_ros.perception.clip_embedder import (ClipEmbedderConfig, find_clip_weights,
                                                       load_clip_embedder)
from onlineanyseg_ros.perception.factory import make_mask_generator
from onlineanyseg_ros.perception.keyframes import (invalid_pose, KeyframePolicyConfig,
                                                   KeyframeSelector, PoseHistory)
from onlineanyseg_ros.ros.conversions.camera_info import camera_info_to_K, K_to_camera_info
from onlineanyseg_ros.ros.conversions.header import NS_PER_S, time_to_ns
from onlineanyseg_ros.ros.conversions.image import (array_to_image, COLOR_ENCODINGS,
                                                    DEPTH_ENCODINGS, depth_m_to_image,
                                                    features_to_image, image_to_depth_m,
                                                    image_to_rgb, labels_to_image)
from onlineanyseg_ros.ros.conversions.pose import matrix_to_pose_stamped, pose_stamped_to_matrix
from onlineanyseg_ros.ros.diagnostics import NodeDiagnostics
from onlineanyseg_ros.ros.frame_queue import FrameQueue, FrameQueueConfig, PairedFrame, TimeJump
from onlineanyseg_ros.ros.node_config import PerceptionNodeConfig
from onlineanyseg_ros.ros.params import ConfigError, declare_config, reject_unknown_parameters
from onlineanyseg_ros.ros.pipeline import NodeStartError, run_nodes
from onlineanyseg_ros.ros.qos import keyframe_qos, sensor_input_qos
from onlineanyseg_ros.ros.tf_buffer import make_pose_source

NODE_NAME = 'perception_node'
KEYFRAME_PARTS = ('color', 'depth', 'camera_info', 'pose', 'masks', 'mask_features')
DIAGNOSTICS_PERIOD_S = 1.0
LATENCY_LOG_PERIOD_S = 30.0
# History of the pose topic and of the TF buffer, in stamp time.
POSE_CACHE_S = 10.0
LATENCY_HISTORY = 1000
_DEVICE_PATTERN = r'cpu|cuda(:\d+)?'

# FrameQueue counter -> (diagnostics kind, what happened).
_QUEUE_SKIPS = {
    'dropped_full': ('queue_full', 'frame queue full, oldest frame dropped (raise queue_size '
                     'or lower the input rate)'),
    'unmatched_color': ('unmatched_color', 'colour image without a depth image within '
                        'sync_tolerance_ms'),
    'unmatched_depth': ('unmatched_depth', 'depth image without a colour image within '
                        'sync_tolerance_ms'),
    'duplicates': ('duplicate_stamp', 'image with the same stamp as the previous one'),
    'pose_timeouts': ('pose_timeout', 'no camera pose within pose_timeout_s'),
    'pose_skipped': ('pose_skipped', 'frame without a pose while a later frame had one'),
    'invalid_poses': ('invalid_pose', 'camera pose at the frame stamp is not a finite rigid '
                      'transform'),
    'camera_info_timeouts': ('no_camera_info', 'no valid depth/camera_info within '
                             'pose_timeout_s'),
}


class _Received(NamedTuple):
    """An image message with its arrival time (monotonic ns), as held in the frame queue."""

    msg: Image
    arrival_ns: int


# What building a model raises when a package, a file or the weights are missing or bad.
_LOAD_ERRORS = (ImportError, KeyError, OSError, RuntimeError, ValueError)


def _load_mask_generator(config: PerceptionNodeConfig):
    """Return the configured mask generator; raise NodeStartError when it cannot be built."""
    try:
        if config.mask_generator == 'cropformer':
            return make_mask_generator('cropformer', config_file=config.cropformer_config_file,
                                       checkpoint=config.cropformer_checkpoint,
                                       device=config.device)
        return make_mask_generator('geometric')
    except _LOAD_ERRORS as error:
        raise NodeStartError(f'cannot load the {config.mask_generator} mask generator: '
                             f'{error}') from None


def _load_clip(config: PerceptionNodeConfig):
    """Return ``(CLIP embedder or None, where the weights were looked for)``.

    None (semantic term off) when no checkpoint is configured and none is cached; raise
    NodeStartError when the configured checkpoint is missing or fails to load.
    """
    clip_config = ClipEmbedderConfig(checkpoint_path=config.clip_checkpoint,
                                     device=config.device)
    try:
        weights, where = find_clip_weights(clip_config)
        embedder = load_clip_embedder(clip_config) if weights is not None else None
    except _LOAD_ERRORS as error:
        raise NodeStartError(f'cannot load CLIP {clip_config.model}: {error}') from None
    if weights is None and config.clip_checkpoint:
        raise NodeStartError(f'parameter clip_checkpoint: {where!r} is not a file')
    return embedder, where


def keyframe_messages(rgbd: RgbdFrame, labels: np.ndarray, features: np.ndarray,
                      frame_id: str, world_frame: str) -> Dict[str, object]:
    """Return the six keyframe-bundle messages of one keyframe, all with its stamp.

    Keys are the ``keyframe/`` topic names: ``masks`` (mono16 labels ``(H, W)``, 0 = none),
    ``mask_features`` (32FC1 ``(N, D)``, ``(0, 0)`` without features), ``color`` (rgb8),
    ``depth`` (32FC1 metres), ``camera_info`` and ``pose`` (``T_world_camera`` in
    ``world_frame``); images and camera info in ``frame_id``.
    """
    stamp_ns = rgbd.stamp_ns
    height, width = rgbd.shape
    return {
        'masks': labels_to_image(labels, stamp_ns, frame_id),
        'mask_features': features_to_image(features, stamp_ns, frame_id),
        'color': array_to_image(rgbd.color, 'rgb8', stamp_ns, frame_id),
        'depth': depth_m_to_image(rgbd.depth, stamp_ns, frame_id),
        'camera_info': K_to_camera_info(rgbd.K, height, width, stamp_ns, frame_id),
        'pose': matrix_to_pose_stamped(rgbd.T_world_camera, stamp_ns, world_frame),
    }


class PerceptionNode(Node):
    """Pair, pose and select frames; publish masks and CLIP features of the keyframes."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        """Declare the parameters, load the models and create the topics.

        ``kwargs`` go to ``rclpy.node.Node`` (``context``, ``parameter_overrides``, ...).
        Raises ConfigError (a parameter is unknown or invalid) or NodeStartError.
        """
        super().__init__(node_name, **kwargs)
        config = self.config = declare_config(self, PerceptionNodeConfig)
        reject_unknown_parameters(self)
        if not re.fullmatch(_DEVICE_PATTERN, config.device):
            raise ConfigError(f'parameter device: must be cpu, cuda or cuda:N, got '
                              f'{config.device!r}')
        if config.device.startswith('cuda') and not torch.cuda.is_available():
            raise NodeStartError(f'parameter device is {config.device!r} but CUDA is not '
                                 'available to torch')
        self._generator = _load_mask_generator(config)
        self._embedder, clip_where = _load_clip(config)
        self._queue = FrameQueue(FrameQueueConfig(
            pair_tolerance_ns=round(config.sync_tolerance_ms * 1e6),
            max_pending=config.queue_size,
            pose_timeout_ns=round(config.pose_timeout_s * NS_PER_S)))
        self._selector = KeyframeSelector(KeyframePolicyConfig(
            every_n_frames=config.keyframe_every_n_frames,
            min_translation_m=config.keyframe_min_translation_m,
            min_rotation_deg=config.keyframe_min_rotation_deg))
        self._diagnostics = NodeDiagnostics(self, 'onlineanyseg: perception')
        self._stages = StageTimer(torch.device(config.device), history=LATENCY_HISTORY)
        self._sync_wait_ms: Deque[float] = deque(maxlen=LATENCY_HISTORY)
        self._mirrored = dict.fromkeys(_QUEUE_SKIPS, 0)
        self._camera_frame = ''
        # Inputs arrive in their own callback group (see _create_inputs); this lock guards
        # what they share with the processing timer: the frame queue, the pose history, the
        # keyframe selector and the camera frame id.
        self._input_lock = threading.Lock()
        self.keyframes_published = 0
        self._keyframe_publishers = {part: self.create_publisher(
            PoseStamped if part == 'pose' else CameraInfo if part == 'camera_info' else Image,
            f'keyframe/{part}', keyframe_qos()) for part in KEYFRAME_PARTS}
        self._create_inputs()
        self.create_timer(1.0 / config.process_rate_hz, self._on_timer)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._on_diagnostics)
        log = self.get_logger()
        if self._embedder is None:
            log.warning(f'CLIP weights not found at {clip_where}: semantic term off, '
                        'keyframe/mask_features carry 0 x 0 features')
        log.info(f'ready: masks {self._generator.name}, CLIP '
                 f'{"on" if self._embedder else "off"}, poses from {self._pose_backend}, '
                 f'keyframe every {config.keyframe_every_n_frames} frames / '
                 f'{config.keyframe_min_translation_m} m / {config.keyframe_min_rotation_deg} deg')

    def _create_inputs(self) -> None:
        """Subscribe to the images, camera_info and the pose source.

        The input callbacks only queue messages and run in their own callback group: under a
        multi-threaded executor (``run_nodes`` spins one) they keep draining the keep-last
        DDS queues while a keyframe is segmented, instead of letting a slow keyframe
        overwrite frames there unseen; the frame queue then bounds and counts what waits.
        """
        qos = sensor_input_qos(self.config.input_qos, depth=self.config.queue_size)
        group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(Image, 'color/image', self._on_color, qos,
                                 callback_group=group)
        self.create_subscription(Image, 'depth/image', self._on_depth, qos,
                                 callback_group=group)
        self.create_subscription(CameraInfo, 'depth/camera_info', self._on_camera_info, qos,
                                 callback_group=group)
        self._pose_history: Optional[PoseHistory] = None
        if self.config.pose_source == 'topic':
            self._pose_history = PoseHistory(self._queue.config.pair_tolerance_ns,
                                             round(POSE_CACHE_S * NS_PER_S))
            self.create_subscription(PoseStamped, 'camera_pose', self._on_pose, qos,
                                     callback_group=group)
            self._pose_backend = 'camera_pose topic'
            return
        try:
            self._tf = make_pose_source(self, POSE_CACHE_S, callback_group=group)
        except ImportError as error:
            raise NodeStartError(f'pose_source tf: {error}') from None
        self._pose_backend = f'TF ({self._tf.backend})'

    def _on_color(self, msg: Image) -> None:
        """Enqueue a colour image (rgb8 / bgr8)."""
        if msg.encoding not in COLOR_ENCODINGS:
            self._diagnostics.skip('bad_encoding', f'colour image encoding {msg.encoding!r} '
                                   f'is not one of {list(COLOR_ENCODINGS)}')
            return
        self._enqueue(self._queue.add_color, msg)

    def _on_depth(self, msg: Image) -> None:
        """Enqueue a depth image (16UC1 / mono16 units of depth_scale, 32FC1 metres)."""
        if msg.encoding not in DEPTH_ENCODINGS:
            self._diagnostics.skip('bad_encoding', f'depth image encoding {msg.encoding!r} '
                                   f'is not one of {list(DEPTH_ENCODINGS)}')
            return
        if self._pose_history is None and not msg.header.frame_id:
            self._diagnostics.skip('missing_frame_id', 'depth image without header.frame_id: '
                                   'no TF pose can be looked up for it')
            return
        with self._input_lock:
            # A camera keeps one optical frame; TF lookups use the latest depth frame id.
            self._camera_frame = msg.header.frame_id
        self._enqueue(self._queue.add_depth, msg)

    def _enqueue(self, add, msg: Image) -> None:
        """Add one image to the frame queue; handle time going backwards."""
        now_ns = time.monotonic_ns()
        with self._input_lock:
            jump = add(time_to_ns(msg.header.stamp), _Received(msg, now_ns), now_ns)
            if jump is not None:
                self._selector.reset()
        if jump is not None:
            self._on_time_jump(jump)

    def _on_time_jump(self, jump: TimeJump) -> None:
        """Report a time jump (the queue and the keyframe selection restarted)."""
        self._diagnostics.skip('time_jump', f'{jump.stream} stamp went back from '
                               f'{jump.previous_stamp_ns / NS_PER_S:.3f} s to '
                               f'{jump.stamp_ns / NS_PER_S:.3f} s: {jump.discarded} pending '
                               'images discarded, keyframe selection restarts')

    def _on_camera_info(self, msg: CameraInfo) -> None:
        """Keep the latest valid camera_info for the frames released from now on."""
        try:
            camera_info_to_K(msg)
        except ValueError as error:
            self._diagnostics.skip('bad_camera_info', f'ignoring depth/camera_info: {error}')
            return
        with self._input_lock:
            self._queue.set_camera_info(msg)

    def _on_pose(self, msg: PoseStamped) -> None:
        """Store a camera_pose sample; a bad one is kept as invalid so its frames drop."""
        world_frame = self.config.world_frame
        if msg.header.frame_id.lstrip('/') != world_frame.lstrip('/'):
            self._diagnostics.skip('pose_frame_mismatch', f'camera_pose is in frame '
                                   f'{msg.header.frame_id!r}, expected world_frame '
                                   f'{world_frame!r}')
            return
        try:
            T_world_camera = pose_stamped_to_matrix(msg)
        except ValueError:
            T_world_camera = invalid_pose()
        stamp_ns = time_to_ns(msg.header.stamp)
        with self._input_lock:
            added = self._pose_history.add(stamp_ns, T_world_camera)
        if not added:
            self._diagnostics.skip('bad_pose_message', f'camera_pose at {stamp_ns / NS_PER_S:.3f}'
                                   ' s is not a finite rigid pose; frames at that time drop')

    def _lookup_pose(self, stamp_ns: int) -> Optional[np.ndarray]:
        """Return T_world_camera (4x4) at ``stamp_ns``, None while unknown (lock held)."""
        if self._pose_history is not None:
            return self._pose_history.lookup(stamp_ns)
        return self._tf.lookup(self.config.world_frame, self._camera_frame, stamp_ns)

    def _on_timer(self) -> None:
        """Process every frame whose pose is known, oldest first."""
        now_ns = time.monotonic_ns()
        with self._input_lock:
            frames = self._queue.pop_ready(self._lookup_pose, now_ns)
        self._mirror_queue_skips()
        for frame in frames:
            arrival_ns = max(frame.color.arrival_ns, frame.depth.arrival_ns)
            self._sync_wait_ms.append((now_ns - arrival_ns) / 1e6)
            rgbd = self._decode(frame)
            if rgbd is None:
                continue
            with self._input_lock:
                is_keyframe = self._selector.add_frame(rgbd.T_world_camera)
            if is_keyframe:
                self._process_keyframe(rgbd, frame.depth.msg.header.frame_id)

    def _mirror_queue_skips(self) -> None:
        """Report the frame queue's new drops through the diagnostics (counted, logged)."""
        with self._input_lock:
            counters = self._queue.counters
        for field, (kind, message) in _QUEUE_SKIPS.items():
            total = getattr(counters, field)
            for _ in range(total - self._mirrored[field]):
                self._diagnostics.skip(kind, message)
            self._mirrored[field] = total

    def _decode(self, frame: PairedFrame) -> Optional[RgbdFrame]:
        """Return the frame's RgbdFrame, or None (counted, logged) when its images are bad."""
        stamp_s = frame.stamp_ns / NS_PER_S
        try:
            with self._stages.scope('decode'):
                color = image_to_rgb(frame.color.msg)
                depth = image_to_depth_m(frame.depth.msg, self.config.depth_scale)
        except ValueError as error:
            self._diagnostics.skip('bad_image', f'frame at {stamp_s:.3f} s: {error}')
            return None
        if color.shape[:2] != depth.shape:
            self._diagnostics.skip('size_mismatch', f'frame at {stamp_s:.3f} s: colour '
                                   f'{color.shape[1]}x{color.shape[0]} and depth '
                                   f'{depth.shape[1]}x{depth.shape[0]} differ (register the '
                                   'depth to the colour image)')
            return None
        info = frame.camera_info
        if info.height and info.width and (info.height, info.width) != depth.shape:
            self._diagnostics.skip('camera_info_size_mismatch', f'frame at {stamp_s:.3f} s: '
                                   f'camera_info is {info.width}x{info.height}, depth '
                                   f'{depth.shape[1]}x{depth.shape[0]}')
            return None
        return RgbdFrame(color=color, depth=depth, K=camera_info_to_K(info),
                         T_world_camera=frame.T_world_camera, stamp_ns=frame.stamp_ns)

    def _process_keyframe(self, rgbd: RgbdFrame, frame_id: str) -> None:
        """Compute masks and features of one keyframe and publish its bundle."""
        with self._stages.scope('masks'):
            masks = self._generator.generate(rgbd)
        with self._stages.scope('clip'):
            features = self._features(rgbd, masks)
        with self._stages.scope('publish'):
            bundle = keyframe_messages(rgbd, masks.labels, features, frame_id,
                                       self.config.world_frame)
            for key, message in bundle.items():
                self._keyframe_publishers[key].publish(message)
        self.keyframes_published += 1

    def _features(self, rgbd: RgbdFrame, masks: MaskObservation) -> np.ndarray:
        """Return float32 (N, D) mask features: CLIP, the generator's own, or (0, 0)."""
        if self._embedder is not None:
            return self._embedder.embed_masks(rgbd.color, masks.labels)
        if masks.features is not None:
            return masks.features.astype(np.float32, copy=False)
        return np.zeros((0, 0), dtype=np.float32)

    @property
    def skip_counts(self) -> Dict[str, int]:
        """Return ``{kind: count}`` of every input skipped so far."""
        self._mirror_queue_skips()
        return dict(self._diagnostics.counters)

    def _on_diagnostics(self) -> None:
        """Publish stage latencies and counters; log a latency line now and then."""
        self._mirror_queue_skips()
        stages = self._stages.summary()
        if self._sync_wait_ms:
            stages['sync_wait'] = latency_summary(self._sync_wait_ms)
        with self._input_lock:
            counters = self._queue.counters
        self._diagnostics.publish(stages, {
            'frames.color': counters.received_color, 'frames.depth': counters.received_depth,
            'frames.paired': counters.paired, 'frames.posed': counters.popped,
            'frames.valid': self._selector.frames, 'keyframes': self.keyframes_published,
            'queue.waiting': len(self._queue), 'pose_source': self._pose_backend,
            'mask_generator': self._generator.name,
            'semantic_features': 'on' if self._embedder is not None else 'off'})
        if stages:
            latencies = ', '.join(f'{stage} {summary["p50_ms"]:.1f}/{summary["p95_ms"]:.1f}'
                                  for stage, summary in sorted(stages.items()))
            self.get_logger().info(f'{self.keyframes_published} keyframes; p50/p95 ms: '
                                   f'{latencies}', throttle_duration_sec=LATENCY_LOG_PERIOD_S)


def main(argv=None) -> int:
    """Run the node until Ctrl-C / SIGTERM; return the exit code (1 when the start fails).

    ``argv`` is a full command line (program name first); None means ``sys.argv``.
    """
    return run_nodes([PerceptionNode], argv)


if __name__ == '__main__':
    sys.exit(main())
