"""The segmentation node: keyframe bundles in, a growing 3D instance map out.

Subscription callbacks only hand the six keyframe parts to an ``ExactStampJoiner``; they run
in their own callback group, so under the multi-threaded executor that ``run_nodes`` spins
parts keep flowing into the joiner while a bundle is integrated, instead of waiting in the
keep-last DDS queues, where a long integration would overwrite them unseen. A timer decodes
one complete bundle per tick and integrates it into the ``OnlineSegmenter`` (which merges on
the method's schedule); a second timer publishes ``instances/cloud`` and
``instances/markers`` when the map changed and someone listens, plus ``diagnostics``. Bad
input is skipped, counted and logged once per kind; the map is never touched by it.

Run: ``python -m onlineanyseg_ros.ros.segmentation_node --ros-args --params-file F``.
"""

from collections import deque
from dataclasses import dataclass
import functools
import os
import pathlib
import sys
import threading
import time
from typing import Deque, Dict, List, Optional

from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger
import torch

from onlineanyseg_ros.core.config import segmenter_config, SegmenterConfig
from onlineanyseg_ros.core.export import ExportedMap
from onlineanyseg_ros.core.profiling import StageTimer
from onlineanyseg_ros.core.segmenter import OnlineSegmenter
from onlineanyseg_ros.core.types import is_rigid_transform, MaskObservation, RgbdFrame
from onlineanyseg_ros.ros.conversions.camera_info import camera_info_to_K
from onlineanyseg_ros.ros.conversions.header import time_to_ns
from onlineanyseg_ros.ros.conversions.image import (image_to_depth_m, image_to_features,
                                                    image_to_labels, image_to_rgb)
from onlineanyseg_ros.ros.conversions.pose import pose_stamped_to_matrix
from onlineanyseg_ros.ros.diagnostics import NodeDiagnostics
from onlineanyseg_ros.ros.frame_queue import ExactStampJoiner, JoinedBundle
from onlineanyseg_ros.ros.instance_query import InstanceQuery, MapPublisher
from onlineanyseg_ros.ros.node_config import SegmentationNodeConfig
from onlineanyseg_ros.ros.params import ConfigError, declare_config, reject_unknown_parameters
from onlineanyseg_ros.ros.pipeline import NodeStartError, run_nodes
from onlineanyseg_ros.ros.qos import keyframe_qos

# Keyframe bundle parts: joiner key -> (message type, topic).
KEYFRAME_TOPICS = {
    'color': (Image, 'keyframe/color'),
    'depth': (Image, 'keyframe/depth'),
    'camera_info': (CameraInfo, 'keyframe/camera_info'),
    'pose': (PoseStamped, 'keyframe/pose'),
    'masks': (Image, 'keyframe/masks'),
    'mask_features': (Image, 'keyframe/mask_features'),
}
# Period of the integration timer; each tick integrates at most one bundle, so services,
# queries and publishing interleave with a long stream.
PROCESS_PERIOD_S = 0.01
# The latency summary is logged at most this often (it is on diagnostics at every tick).
LATENCY_LOG_PERIOD_S = 30.0
# Metres per unit of 16UC1 keyframe depth (not a node parameter yet).
DEPTH_SCALE_M = 0.001


class BundleError(ValueError):
    """A keyframe bundle cannot be integrated; ``kind`` names the skip counter."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class DecodedBundle:
    """One keyframe ready for ``OnlineSegmenter.integrate`` (masks None = no mask)."""

    frame: RgbdFrame
    masks: Optional[MaskObservation]
    world_frame: str


def _checked(kind: str, decode, *args):
    """Return ``decode(*args)``; turn its ValueError into a BundleError of ``kind``."""
    try:
        return decode(*args)
    except ValueError as error:
        raise BundleError(kind, str(error)) from None


def decode_bundle(bundle: JoinedBundle, depth_scale_m: float = DEPTH_SCALE_M) -> DecodedBundle:
    """Decode and validate the six parts of a keyframe bundle; raise BundleError when bad.

    Features of width 0 mean that the masks carry no semantic features; otherwise the
    feature image must have one row per mask id (height = highest label).
    """
    parts = bundle.parts
    color = _checked('bad_encoding', image_to_rgb, parts['color'])
    depth = _checked('bad_encoding', image_to_depth_m, parts['depth'], depth_scale_m)
    labels = _checked('bad_encoding', image_to_labels, parts['masks'])
    features = _checked('bad_encoding', image_to_features, parts['mask_features'])
    K = _checked('bad_camera_info', camera_info_to_K, parts['camera_info'])
    T_world_camera = _checked('bad_pose', pose_stamped_to_matrix, parts['pose'])
    if not is_rigid_transform(T_world_camera):
        raise BundleError('bad_pose', 'the pose is not a finite rigid transform')
    info = parts['camera_info']
    info_shape = (int(info.height), int(info.width))
    if color.shape[:2] != depth.shape or labels.shape != depth.shape or (
            all(info_shape) and info_shape != depth.shape):
        raise BundleError('size_mismatch', f'colour {color.shape[:2]}, depth {depth.shape}, '
                          f'masks {labels.shape} and camera_info {info_shape} differ in size')
    num_masks = int(labels.max()) if labels.size else 0
    if features.shape[1] > 0 and features.shape[0] != num_masks:
        raise BundleError('feature_mismatch', f'mask_features has {features.shape[0]} rows '
                          f'but the masks reach label {num_masks}')
    frame = RgbdFrame(color, depth, K, T_world_camera, stamp_ns=bundle.stamp_ns)
    masks = None
    if num_masks:
        masks = MaskObservation(labels, features if features.shape[1] > 0 else None)
    return DecodedBundle(frame, masks, parts['pose'].header.frame_id)


def device_memory_bytes(device: torch.device) -> Dict[str, int]:
    """Return ``{'cuda_allocated_bytes': n}`` on CUDA, else ``{'process_rss_bytes': n}``."""
    if device.type == 'cuda':
        return {'cuda_allocated_bytes': int(torch.cuda.memory_allocated(device))}
    with open('/proc/self/statm') as handle:
        resident_pages = int(handle.read().split()[1])
    return {'process_rss_bytes': resident_pages * os.sysconf('SC_PAGE_SIZE')}


def _checked_device(name: str) -> torch.device:
    """Return ``torch.device(name)`` or raise ConfigError naming the ``device`` parameter."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f'parameter device: {error}') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f'parameter device: {name} requested but CUDA is not available')
    return device


def _load_text_encoder(config: SegmentationNodeConfig, device: torch.device, logger):
    """Return the CLIP text encoder, or None when no weights are cached (queries answer empty).

    Raises NodeStartError when the configured checkpoint is missing or fails to load.
    """
    from onlineanyseg_ros.perception.clip_embedder import (ClipEmbedderConfig,
                                                           find_clip_weights,
                                                           load_clip_embedder)
    clip_config = ClipEmbedderConfig(checkpoint_path=config.clip_checkpoint, device=str(device))
    try:
        weights, where = find_clip_weights(clip_config)
        embedder = load_clip_embedder(clip_config) if weights is not None else None
    except (ImportError, OSError, RuntimeError, ValueError) as error:
        raise NodeStartError(f'cannot load the CLIP text encoder: {error}') from None
    if weights is None:
        if config.clip_checkpoint:
            raise NodeStartError(f'parameter clip_checkpoint: {where!r} is not a file')
        logger.warning(f'CLIP weights not found in {where}: text queries answer empty')
        return None
    return embedder.embed_text


class SegmentationNode(Node):
    """OnlineAnySeg mapping node (parameters: SegmentationNodeConfig + ``segmenter.*``)."""

    def __init__(self, node_name: str = 'segmentation_node', **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.config = declare_config(self, SegmentationNodeConfig)
        segmenter_base = segmenter_config(self.config.profile)
        segmenter_cfg = declare_config(self, SegmenterConfig, 'segmenter.', base=segmenter_base)
        reject_unknown_parameters(self)
        device = _checked_device(self.config.device)
        self.segmenter = OnlineSegmenter(segmenter_cfg, str(device))
        self.diagnostics = NodeDiagnostics(self, 'onlineanyseg: segmentation')
        # Host stages (decoding, answering queries, publishing): wall clock, no device syncs.
        self.timer = StageTimer(torch.device('cpu'))
        self._joiner = ExactStampJoiner(
            tuple(KEYFRAME_TOPICS), max_pending=self.config.bundle_queue_size,
            timeout_ns=int(self.config.bundle_timeout_s * 1e9))
        self._joiner_drops = {'dropped_full': 0, 'expired': 0, 'duplicates': 0}
        self._ready: Deque[JoinedBundle] = deque()
        # Guards the joiner and the ready queue: parts arrive in their own callback group.
        self._bundle_lock = threading.Lock()
        parts_group = MutuallyExclusiveCallbackGroup()
        self._last_stamp_ns: Optional[int] = None
        self.world_frame = ''
        self.map_stamp_ns = 0
        self.map_version = 0
        self._exported: Optional[ExportedMap] = None
        self._exported_version = -1
        for key, (msg_type, topic) in KEYFRAME_TOPICS.items():
            self.create_subscription(msg_type, topic, functools.partial(self._on_part, key),
                                     keyframe_qos(self.config.bundle_queue_size),
                                     callback_group=parts_group)
        self.map_outputs = MapPublisher(self)
        self.create_service(Trigger, 'save_map', self._on_save_map)
        self.create_service(Trigger, 'reset', self._on_reset)
        self.query = InstanceQuery(self, self.diagnostics,
                                   _load_text_encoder(self.config, device,
                                                      self.get_logger()),
                                   self.config.query_top_k)
        self.create_timer(PROCESS_PERIOD_S, self._on_process)
        self.create_timer(1.0 / self.config.publish_rate_hz, self._on_publish)
        self.get_logger().info(
            f'segmenting on {device} (profile {self.config.profile}, descriptor '
            f'{segmenter_cfg.descriptor}); text queries '
            f'{"on" if self.query.enabled else "off (no CLIP weights)"}')

    def _on_part(self, key: str, msg) -> None:
        """Enqueue one keyframe part; a completed bundle joins the bounded ready queue."""
        with self._bundle_lock:
            bundle = self._joiner.add(key, time_to_ns(msg.header.stamp), msg,
                                      time.monotonic_ns())
            if bundle is None:
                return
            dropped = None
            if len(self._ready) >= self.config.bundle_queue_size:
                dropped = self._ready.popleft()
            self._ready.append(bundle)
        if dropped is not None:
            self.diagnostics.skip('ready_queue_full', f'keyframe at {dropped.stamp_ns * 1e-9:.3f}'
                                  ' s dropped: the map is falling behind the keyframes')

    def _on_process(self) -> None:
        """Report joiner drops, integrate one ready bundle, answer a pending query."""
        with self._bundle_lock:
            self._joiner.expire(time.monotonic_ns())
            counters = self._joiner.counters
            bundle = self._ready.popleft() if self._ready else None
        self._report_joiner_drops(counters)
        if bundle is not None:
            self._integrate(bundle)
        if self.query.pending:
            with self.timer.scope('query'):
                self.query.answer(self.exported_map(), self.map_stamp_ns, self.world_frame)

    def _report_joiner_drops(self, counters) -> None:
        """Count and log the joiner's new drops as skips (one per dropped bundle or part)."""
        messages = {
            'dropped_full': 'incomplete keyframe bundle dropped: more than '
                            f'{self.config.bundle_queue_size} waiting for their parts',
            'expired': 'incomplete keyframe bundle dropped after '
                       f'{self.config.bundle_timeout_s} s (is a keyframe topic missing?)',
            'duplicates': 'keyframe part received twice for one stamp (ignored)'}
        for name, message in messages.items():
            new = getattr(counters, name) - self._joiner_drops[name]
            for _ in range(new):
                self.diagnostics.skip(f'bundle_{name}', message)
            self._joiner_drops[name] += new

    def _integrate(self, bundle: JoinedBundle) -> None:
        """Decode, check the stamp order and integrate one bundle into the map."""
        try:
            with self.timer.scope('decode'):
                decoded = decode_bundle(bundle)
        except BundleError as error:
            self.diagnostics.skip(error.kind, f'keyframe at {bundle.stamp_ns * 1e-9:.3f} s '
                                  f'skipped: {error}')
            return
        stamp_ns = bundle.stamp_ns
        if self._last_stamp_ns is not None and stamp_ns <= self._last_stamp_ns:
            if stamp_ns == self._last_stamp_ns:
                self.diagnostics.skip('duplicate_stamp', f'keyframe at {stamp_ns * 1e-9:.3f} s '
                                      'was already integrated')
                return
            action = 'map reset' if self.config.reset_on_time_jump else 'map kept'
            self.diagnostics.skip('time_jump', f'keyframe time went backwards from '
                                  f'{self._last_stamp_ns * 1e-9:.3f} s to '
                                  f'{stamp_ns * 1e-9:.3f} s (bag loop?): {action}')
            if self.config.reset_on_time_jump:
                self.reset_map()
        if decoded.masks is None:
            self.diagnostics.skip('empty_masks', f'keyframe at {stamp_ns * 1e-9:.3f} s has no '
                                  'mask: depth integrated, no mask inserted')
        try:
            self.segmenter.integrate(decoded.frame, decoded.masks)
        except ValueError as error:
            self.diagnostics.skip('rejected', f'keyframe at {stamp_ns * 1e-9:.3f} s rejected '
                                  f'by the segmenter: {error}')
            return
        self._last_stamp_ns = stamp_ns
        self.world_frame = decoded.world_frame
        self.map_stamp_ns = stamp_ns
        self.map_version += 1

    def exported_map(self) -> Optional[ExportedMap]:
        """Return the current map export (cached per map version), None before any frame."""
        if self.segmenter.frames_integrated == 0:
            return None
        if self._exported_version != self.map_version:
            self._exported = self.segmenter.labeled_points()
            self._exported_version = self.map_version
        return self._exported

    def _on_publish(self) -> None:
        """Publish the map outputs that changed and have subscribers, then diagnostics."""
        cloud, markers = self.map_outputs.wanted(self.map_version)
        if cloud or markers:
            exported = self.exported_map()
            with self.timer.scope('publish'):
                self.map_outputs.publish(exported, self.map_version, self.map_stamp_ns,
                                         self.world_frame, cloud, markers)
        self._publish_diagnostics()

    def _publish_diagnostics(self) -> None:
        segmenter = self.segmenter
        values = {'frames_integrated': segmenter.frames_integrated,
                  'mask_insertions': segmenter.insertions, 'merge_rounds': segmenter.merge_rounds,
                  'voxels': segmenter.num_voxels, 'merged_masks': segmenter.num_merged_masks,
                  'bundles_incomplete': len(self._joiner), 'bundles_ready': len(self._ready),
                  'semantic_term': segmenter.semantic_active}
        if self._exported is not None and self._exported_version == self.map_version:
            values['instances'] = self._exported.num_instances
        values.update(device_memory_bytes(segmenter.device))
        values.update({f'lifting_graph_{name}': count
                       for name, count in segmenter.lifting_stats.items()})
        values.update({f'voxel_hash_graph_{name}': count
                       for name, count in segmenter.hash_graph_stats.items()})
        values.update({f'backproject_graph_{name}': count
                       for name, count in segmenter.backproject_graph_stats.items()})
        stages = dict(segmenter.timer.summary())
        stages.update(self.timer.summary())
        self.diagnostics.publish(stages, values)
        if stages:
            latencies = ', '.join(f'{stage} {summary["p50_ms"]:.0f}/{summary["p95_ms"]:.0f}'
                                  for stage, summary in sorted(stages.items()))
            self.get_logger().info(
                f'{segmenter.frames_integrated} keyframes, {segmenter.num_voxels} voxels, '
                f'{segmenter.num_merged_masks} merged masks; p50/p95 ms: {latencies}',
                throttle_duration_sec=LATENCY_LOG_PERIOD_S)

    def reset_map(self) -> None:
        """Empty the map; publish an empty cloud and DELETEALL markers (and query result)."""
        self.segmenter.reset()
        self._last_stamp_ns = None
        self.map_version += 1
        self._exported, self._exported_version = None, -1
        self.map_outputs.clear(self.map_version, self.map_stamp_ns, self.world_frame)
        self.query.clear(self.map_stamp_ns, self.world_frame)

    def _on_save_map(self, request: Trigger.Request, response: Trigger.Response):
        directory = pathlib.Path(self.config.output_dir).expanduser().resolve()
        try:
            self.segmenter.save(str(directory))
        except OSError as error:
            response.success, response.message = False, f'saving to {directory} failed: {error}'
            self.get_logger().error(response.message)
            return response
        response.success, response.message = True, str(directory)
        self.get_logger().info(f'map saved to {directory}')
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        self.reset_map()
        self.get_logger().info('map reset')
        response.success, response.message = True, 'map reset'
        return response


def main(argv: Optional[List[str]] = None) -> int:
    """Run the segmentation node until Ctrl-C / SIGTERM; return the exit code."""
    return run_nodes([SegmentationNode], argv)


if __name__ == '__main__':
    sys.exit(main())
