"""A small TF buffer for machines without tf2_ros, its /tf listener, and the pose source.

``TfBuffer`` is ROS-free: transforms ``T_parent_child`` (float64 4x4, maps child points
into the parent frame) keyed by integer-nanosecond stamps, interpolated in time (slerp for
rotation, lerp for translation), chained through the frame tree, static ones valid at all
times. ``TfListener`` feeds it from /tf and /tf_static (needs tf2_msgs, see
tools/build_tf2_msgs.sh); ``make_pose_source`` prefers tf2_ros where a ROS install has it.
rclpy and message packages are imported only by the listener and the tf2_ros adapter, so
the buffer works without ROS.
"""

import bisect
from dataclasses import dataclass, field
from functools import partial
import threading
from typing import Dict, List, Optional, Protocol

import numpy as np

from onlineanyseg_ros.core.types import is_rigid_transform
from onlineanyseg_ros.ros.conversions.quaternion import (invert_transform,
                                                         rotation_to_quaternion, slerp,
                                                         transform_matrix)

NS_PER_S = 1_000_000_000
# A frame tree deeper than this is a parent loop, not a robot.
_MAX_TREE_DEPTH = 1000


@dataclass
class _Edge:
    """The history of ``T_parent_child`` of one child frame, sorted by stamp."""

    parent: str
    static: bool
    stamps_ns: List[int] = field(default_factory=list)
    translations: List[np.ndarray] = field(default_factory=list)
    quaternions: List[np.ndarray] = field(default_factory=list)


def _frame_name(frame_id: str) -> str:
    """Return a frame id without the leading slash that tf2 also ignores."""
    return frame_id[1:] if frame_id.startswith('/') else frame_id


class TfBuffer:
    """Time-indexed transform tree with interpolation; thread-safe.

    Args:
        cache_time_s: history kept per frame, relative to that frame's newest stamp.
        extrapolation_tolerance_ns: a lookup this far before the first or after the last
            sample of a frame uses that sample; beyond it the lookup fails (None).

    """

    def __init__(self, cache_time_s: float = 10.0,
                 extrapolation_tolerance_ns: int = 5_000_000) -> None:
        """Create an empty buffer."""
        if cache_time_s <= 0 or extrapolation_tolerance_ns < 0:
            raise ValueError(f'cache_time_s must be > 0 and extrapolation_tolerance_ns >= 0, '
                             f'got {cache_time_s} and {extrapolation_tolerance_ns}')
        self.cache_time_ns = int(cache_time_s * NS_PER_S)
        self.extrapolation_tolerance_ns = int(extrapolation_tolerance_ns)
        self._edges: Dict[str, _Edge] = {}
        self._lock = threading.Lock()

    def frames(self) -> List[str]:
        """Return every frame known as a parent or a child, sorted."""
        with self._lock:
            names = set(self._edges) | {edge.parent for edge in self._edges.values()}
        return sorted(names)

    def clear(self) -> None:
        """Forget every transform (e.g. after time jumped backwards)."""
        with self._lock:
            self._edges.clear()

    def set_transform(self, parent_frame: str, child_frame: str, stamp_ns: int,
                      T_parent_child: np.ndarray, static: bool = False) -> None:
        """Store ``T_parent_child`` at ``stamp_ns`` (any order); static ones hold at all times.

        A child gets a new history when its parent or its static flag changes.
        """
        parent, child = _frame_name(parent_frame), _frame_name(child_frame)
        if not parent or not child or parent == child:
            raise ValueError(f'transform needs two different, non-empty frames, got '
                             f'{parent_frame!r} -> {child_frame!r}')
        T = np.asarray(T_parent_child, dtype=np.float64)
        if not is_rigid_transform(T):
            raise ValueError(f'transform {parent} -> {child} is not a finite rigid 4x4 matrix')
        quaternion = rotation_to_quaternion(T[:3, :3])
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static:
                edge = self._edges[child] = _Edge(parent, static)
            if static:
                edge.stamps_ns[:], edge.translations[:], edge.quaternions[:] = (
                    [stamp_ns], [T[:3, 3].copy()], [quaternion])
                return
            self._insert_sample(edge, int(stamp_ns), T[:3, 3].copy(), quaternion)

    def _insert_sample(self, edge: _Edge, stamp_ns: int, translation: np.ndarray,
                       quaternion: np.ndarray) -> None:
        """Insert (or replace at an equal stamp) one sample, then prune the old ones."""
        index = bisect.bisect_left(edge.stamps_ns, stamp_ns)
        if index < len(edge.stamps_ns) and edge.stamps_ns[index] == stamp_ns:
            edge.translations[index], edge.quaternions[index] = translation, quaternion
        else:
            edge.stamps_ns.insert(index, stamp_ns)
            edge.translations.insert(index, translation)
            edge.quaternions.insert(index, quaternion)
        oldest_kept = edge.stamps_ns[-1] - self.cache_time_ns
        first_kept = bisect.bisect_left(edge.stamps_ns, oldest_kept)
        if first_kept:
            del edge.stamps_ns[:first_kept], edge.translations[:first_kept]
            del edge.quaternions[:first_kept]

    def lookup(self, target_frame: str, source_frame: str,
               stamp_ns: int) -> Optional[np.ndarray]:
        """Return ``T_target_source`` (float64 4x4) at ``stamp_ns``, or None if unknown.

        ``stamp_ns == 0`` asks for the latest time all transforms of the chain share (as
        tf2's ``Time(0)``). None when a frame is unknown, the frames are not connected, or
        the stamp lies outside a frame's history by more than the extrapolation tolerance.
        """
        target, source = _frame_name(target_frame), _frame_name(source_frame)
        with self._lock:
            if target == source:
                return np.eye(4)
            source_chain, target_chain = self._chain(source), self._chain(target)
            target_index = {frame: index for index, frame in enumerate(target_chain)}
            ancestor_index = next((index for index, frame in enumerate(source_chain)
                                   if frame in target_index), None)
            if ancestor_index is None:
                return None
            # Edges are keyed by child: the chain below the common ancestor.
            source_edges = source_chain[:ancestor_index]
            target_edges = target_chain[:target_index[source_chain[ancestor_index]]]
            if stamp_ns == 0:
                stamp_ns = self._latest_common_stamp(source_edges + target_edges)
            T_ancestor_source = self._compose(source_edges, stamp_ns)
            T_ancestor_target = self._compose(target_edges, stamp_ns)
        if T_ancestor_source is None or T_ancestor_target is None:
            return None
        return invert_transform(T_ancestor_target) @ T_ancestor_source

    def _chain(self, frame: str) -> List[str]:
        """Return ``[frame, parent, grandparent, ..., root]``."""
        chain = [frame]
        while chain[-1] in self._edges and len(chain) <= _MAX_TREE_DEPTH:
            chain.append(self._edges[chain[-1]].parent)
        return chain

    def _latest_common_stamp(self, children: List[str]) -> int:
        """Return the newest stamp every dynamic edge of ``children`` has (0 if none)."""
        newest = [self._edges[child].stamps_ns[-1] for child in children
                  if not self._edges[child].static]
        return min(newest) if newest else 0

    def _compose(self, children: List[str], stamp_ns: int) -> Optional[np.ndarray]:
        """Return ``T_top_bottom`` along ``children`` (bottom first) at ``stamp_ns``."""
        T = np.eye(4)
        for child in children:
            T_parent_child = self._sample(self._edges[child], stamp_ns)
            if T_parent_child is None:
                return None
            T = T_parent_child @ T
        return T

    def _sample(self, edge: _Edge, stamp_ns: int) -> Optional[np.ndarray]:
        """Return the edge's transform at ``stamp_ns``, interpolated, or None outside it."""
        stamps = edge.stamps_ns
        if edge.static:
            return transform_matrix(edge.translations[0], edge.quaternions[0])
        tolerance = self.extrapolation_tolerance_ns
        if stamp_ns <= stamps[0]:
            nearest = 0 if stamps[0] - stamp_ns <= tolerance else None
        elif stamp_ns >= stamps[-1]:
            nearest = len(stamps) - 1 if stamp_ns - stamps[-1] <= tolerance else None
        else:
            after = bisect.bisect_left(stamps, stamp_ns)
            fraction = (stamp_ns - stamps[after - 1]) / (stamps[after] - stamps[after - 1])
            translation = ((1.0 - fraction) * edge.translations[after - 1]
                           + fraction * edge.translations[after])
            quaternion = slerp(edge.quaternions[after - 1], edge.quaternions[after], fraction)
            return transform_matrix(translation, quaternion)
        if nearest is None:
            return None
        return transform_matrix(edge.translations[nearest], edge.quaternions[nearest])


class TfListener:
    """Feed a TfBuffer from /tf and /tf_static (tf2_msgs/TFMessage) of an rclpy node.

    Invalid transforms (non-finite, non-unit quaternion) are skipped, counted in
    ``rejected`` and logged (throttled).
    """

    def __init__(self, node, buffer: TfBuffer, tf_topic: str = '/tf',
                 tf_static_topic: str = '/tf_static', callback_group=None) -> None:
        """Subscribe ``node`` to both topics; raises ImportError when tf2_msgs is missing.

        ``callback_group``: of both subscriptions (None: the node's default group).
        """
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError as error:
            raise ImportError('tf2_msgs is not importable: source a ROS 2 install or run '
                              'tools/build_tf2_msgs.sh <venv>') from error
        from onlineanyseg_ros.ros.qos import tf_qos, tf_static_qos
        self.buffer = buffer
        self.rejected = 0
        self._node = node
        self._subscriptions = [
            node.create_subscription(TFMessage, tf_topic, partial(self._on_tf, static=False),
                                     tf_qos(), callback_group=callback_group),
            node.create_subscription(TFMessage, tf_static_topic,
                                     partial(self._on_tf, static=True), tf_static_qos(),
                                     callback_group=callback_group),
        ]

    def _on_tf(self, msg, static: bool) -> None:
        """Store every transform of one TFMessage."""
        from onlineanyseg_ros.ros.conversions.header import time_to_ns
        from onlineanyseg_ros.ros.conversions.pose import transform_stamped_to_matrix
        for transform in msg.transforms:
            try:
                self.buffer.set_transform(transform.header.frame_id, transform.child_frame_id,
                                          time_to_ns(transform.header.stamp),
                                          transform_stamped_to_matrix(transform), static)
            except ValueError as error:
                self.rejected += 1
                self._node.get_logger().warning(f'ignoring transform: {error}',
                                                throttle_duration_sec=5.0)

    def destroy(self) -> None:
        """Remove the subscriptions from the node."""
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []


class PoseSource(Protocol):
    """Transform lookups by stamp, whatever TF implementation is behind them."""

    backend: str

    def lookup(self, target_frame: str, source_frame: str,
               stamp_ns: int) -> Optional[np.ndarray]:
        """Return ``T_target_source`` (float64 4x4) at ``stamp_ns`` or None while unknown."""

    def clear(self) -> None:
        """Forget every transform."""


class TfBufferPoseSource:
    """PoseSource over our TfBuffer and TfListener."""

    backend = 'onlineanyseg TfBuffer'

    def __init__(self, node, cache_time_s: float = 10.0, callback_group=None) -> None:
        """Listen to /tf and /tf_static on ``node`` (in ``callback_group``)."""
        self.buffer = TfBuffer(cache_time_s)
        self.listener = TfListener(node, self.buffer, callback_group=callback_group)

    def lookup(self, target_frame: str, source_frame: str,
               stamp_ns: int) -> Optional[np.ndarray]:
        """Return ``T_target_source`` (float64 4x4) at ``stamp_ns`` or None while unknown."""
        return self.buffer.lookup(target_frame, source_frame, stamp_ns)

    def clear(self) -> None:
        """Forget every transform."""
        self.buffer.clear()


class Tf2RosPoseSource:
    """PoseSource over tf2_ros.Buffer and TransformListener (ROS installs)."""

    backend = 'tf2_ros'

    def __init__(self, node, cache_time_s: float = 10.0) -> None:
        """Listen to /tf and /tf_static on ``node`` through tf2_ros.

        tf2_ros's listener subscribes in a reentrant callback group of its own.
        """
        from rclpy.duration import Duration
        import tf2_ros
        self._tf2_ros = tf2_ros
        self.buffer = tf2_ros.Buffer(cache_time=Duration(nanoseconds=int(cache_time_s * 1e9)),
                                     node=node)
        self.listener = tf2_ros.TransformListener(self.buffer, node)

    def lookup(self, target_frame: str, source_frame: str,
               stamp_ns: int) -> Optional[np.ndarray]:
        """Return ``T_target_source`` (float64 4x4) at ``stamp_ns`` or None while unknown."""
        from rclpy.time import Time
        from onlineanyseg_ros.ros.conversions.pose import transform_stamped_to_matrix
        try:
            transform = self.buffer.lookup_transform(target_frame, source_frame,
                                                     Time(nanoseconds=stamp_ns))
        except self._tf2_ros.TransformException:
            return None
        return transform_stamped_to_matrix(transform)

    def clear(self) -> None:
        """Forget every transform."""
        self.buffer.clear()


def make_pose_source(node, cache_time_s: float = 10.0,
                     use_tf2_ros: Optional[bool] = None,
                     callback_group=None) -> PoseSource:
    """Return a TF pose source on ``node``: tf2_ros when importable, else our TfBuffer.

    ``use_tf2_ros`` forces the choice (True fails with ImportError where tf2_ros is missing).
    ``callback_group`` takes our TfBuffer's subscriptions (tf2_ros uses its own group).
    """
    if use_tf2_ros is None:
        try:
            import tf2_ros  # noqa: F401
            use_tf2_ros = True
        except ImportError:
            use_tf2_ros = False
    if use_tf2_ros:
        return Tf2RosPoseSource(node, cache_time_s)
    return TfBufferPoseSource(node, cache_time_s, callback_group)
