"""Exported instances as messages: the map outputs (cloud, markers) and the text query.

Point and marker ids are the stable instance ids ``ExportedMap.uids`` plus one (they survive
merges and renumbering, so RViz keeps an instance's box while the map grows; the offset keeps
0 free for "no instance", as uids start at 0). ``MapPublisher`` owns the latched
``instances/{cloud,markers}``; ``InstanceQuery`` wires the ROS-free ranking
(``core/query.py``) to ``query`` (std_msgs/String) in and ``query/{markers,cloud}`` out.
"""

from collections import deque
from typing import Deque, List, Optional, Sequence, Tuple

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from onlineanyseg_ros.core.export import ExportedMap, instance_palette
from onlineanyseg_ros.core.query import (query_instances, QueryResult, QueryUnavailable,
                                         select_instance_points, TextEncoder)
from onlineanyseg_ros.ros.conversions.markers import (delete_all_markers,
                                                      delete_instance_markers,
                                                      instance_markers)
from onlineanyseg_ros.ros.conversions.pointcloud import (make_instance_points,
                                                         points_to_pointcloud2)
from onlineanyseg_ros.ros.diagnostics import NodeDiagnostics
from onlineanyseg_ros.ros.qos import keyframe_qos, map_output_qos

QUERY_NAMESPACE = 'query'
INSTANCE_NAMESPACE = 'instances'


def published_ids(exported: ExportedMap) -> np.ndarray:
    """Return int64 ``(I,)`` published id (stable uid + 1, never 0) of every instance."""
    return np.asarray(exported.uids, dtype=np.int64) + 1


def point_ids(exported: ExportedMap) -> np.ndarray:
    """Return int64 ``(N,)`` published instance id of every point (0 = no instance)."""
    return np.concatenate([[0], published_ids(exported)])[exported.instance_ids]


def instance_boxes(exported: ExportedMap) -> tuple:
    """Return float64 ``(I, 3)`` centres and ``(I, 3)`` sizes of the instances' boxes (metres).

    Axis-aligned in the map frame; computed in one pass over the points.
    """
    count = exported.num_instances
    low = np.full((count, 3), np.inf)
    high = np.full((count, 3), -np.inf)
    labeled = exported.instance_ids > 0
    rows = exported.instance_ids[labeled].astype(np.int64) - 1
    points = exported.points[labeled].astype(np.float64)
    np.minimum.at(low, rows, points)
    np.maximum.at(high, rows, points)
    empty = ~np.isfinite(low).all(axis=1)
    low[empty] = high[empty] = 0.0
    return (low + high) / 2, high - low


def instance_cloud(exported: ExportedMap, stamp_ns: int, frame_id: str,
                   rows: Optional[np.ndarray] = None) -> PointCloud2:
    """Return the cloud (x y z rgb instance_id) of instance ``rows`` (None = whole map).

    rgb is the instance colour (grey for points of no instance), instance_id the published
    (stable) id.
    """
    keep = select_instance_points(exported, rows)
    points = make_instance_points(exported.points[keep], exported.instance_colors()[keep],
                                  point_ids(exported)[keep])
    return points_to_pointcloud2(points, stamp_ns, frame_id)


def instance_marker_array(exported: ExportedMap, stamp_ns: int, frame_id: str,
                          rows: Optional[np.ndarray] = None,
                          labels: Optional[Sequence[str]] = None,
                          deleted_ids: Sequence[int] = (),
                          namespace: str = INSTANCE_NAMESPACE,
                          clear_first: bool = False) -> MarkerArray:
    """Return [DELETEALL,] DELETEs for ``deleted_ids``, then a box and a label per instance.

    Marker ids are the published instance ids; ``rows`` selects instances (None = all, in id
    order); ``labels`` are shown after the id (default: the instance confidence). Box colours
    match the cloud's.
    """
    rows = np.arange(exported.num_instances) if rows is None else np.asarray(rows, np.int64)
    centers, sizes = instance_boxes(exported)
    colors = instance_palette(np.asarray(exported.uids)[rows])
    if labels is None:
        labels = [f'{score:.2f}' for score in exported.scores[rows].tolist()]
    markers = instance_markers(published_ids(exported)[rows], centers[rows], sizes[rows],
                               colors, labels, stamp_ns, frame_id, namespace)
    prefix = list(delete_all_markers(stamp_ns, frame_id).markers) if clear_first else []
    prefix += delete_instance_markers(deleted_ids, stamp_ns, frame_id, namespace).markers
    markers.markers = prefix + list(markers.markers)
    return markers


def empty_cloud(stamp_ns: int, frame_id: str) -> PointCloud2:
    """Return an instance cloud with no point (same fields as a full one)."""
    points = make_instance_points(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8),
                                  np.zeros(0, np.int64))
    return points_to_pointcloud2(points, stamp_ns, frame_id)


class MapPublisher:
    """The latched ``instances/cloud`` and ``instances/markers`` of one map.

    Each output is rebuilt only when the map version changed since it was last published
    and someone subscribes (a viewer that subscribes later gets a fresh one on the next
    tick). Marker arrays carry DELETEs for the instances gone since the previous array and
    a box and label for every current instance, so the latest array alone is the full state.
    """

    def __init__(self, node: Node) -> None:
        self._cloud = node.create_publisher(PointCloud2, 'instances/cloud', map_output_qos())
        self._markers = node.create_publisher(MarkerArray, 'instances/markers',
                                              map_output_qos())
        self._versions = {'cloud': 0, 'markers': 0}
        self._marker_ids: List[int] = []
        # After a reset the next marker array starts with DELETEALL too: with depth-1 history
        # a quick update may replace the reset's own DELETEALL before a viewer got it.
        self._clear_markers_first = False

    def wanted(self, version: int) -> Tuple[bool, bool]:
        """Return (cloud, markers): which outputs are older than ``version`` and subscribed."""
        return (self._versions['cloud'] != version and self._cloud.get_subscription_count() > 0,
                self._versions['markers'] != version
                and self._markers.get_subscription_count() > 0)

    def publish(self, exported: ExportedMap, version: int, stamp_ns: int, frame_id: str,
                cloud: bool = True, markers: bool = True) -> None:
        """Publish the cloud and/or markers of ``exported`` (map ``version``)."""
        if cloud:
            self._cloud.publish(instance_cloud(exported, stamp_ns, frame_id))
            self._versions['cloud'] = version
        if markers:
            ids = published_ids(exported).tolist()
            gone = sorted(set(self._marker_ids) - set(ids))
            self._markers.publish(instance_marker_array(
                exported, stamp_ns, frame_id, deleted_ids=gone,
                clear_first=self._clear_markers_first))
            self._clear_markers_first = False
            self._marker_ids = ids
            self._versions['markers'] = version

    def clear(self, version: int, stamp_ns: int, frame_id: str) -> None:
        """Publish an empty cloud and a DELETEALL for the emptied map ``version``."""
        self._cloud.publish(empty_cloud(stamp_ns, frame_id))
        self._markers.publish(delete_all_markers(stamp_ns, frame_id))
        self._marker_ids = []
        self._clear_markers_first = True
        self._versions = dict.fromkeys(self._versions, version)


class InstanceQuery:
    """The node's text query: ``query`` in, top-k instances on ``query/{markers,cloud}``.

    The subscription callback only stores the text (the newest wins; replaced ones are
    counted); ``answer`` runs the text encoder, so the node calls it from its timer.

    Args:
        node: the owning node.
        diagnostics: where skips are counted and logged.
        encode_text: text encoder ``(texts) -> (len(texts), D)``, or None when CLIP is off.
        top_k: instances returned per query.

    """

    def __init__(self, node: Node, diagnostics: NodeDiagnostics,
                 encode_text: Optional[TextEncoder], top_k: int) -> None:
        self._diagnostics = diagnostics
        self._encode_text = encode_text
        self._top_k = top_k
        self._pending: Deque[str] = deque(maxlen=1)
        self.last_result: Optional[QueryResult] = None
        self._markers = node.create_publisher(MarkerArray, 'query/markers', map_output_qos())
        self._cloud = node.create_publisher(PointCloud2, 'query/cloud', map_output_qos())
        self._subscription = node.create_subscription(String, 'query', self._on_query,
                                                      keyframe_qos())

    @property
    def enabled(self) -> bool:
        """Return True when a text encoder is available (CLIP on)."""
        return self._encode_text is not None

    @property
    def pending(self) -> bool:
        """Return True when a query waits for ``answer``."""
        return bool(self._pending)

    def _on_query(self, msg: String) -> None:
        if self._pending:
            self._diagnostics.skip('query_replaced', f'query {self._pending[0]!r} replaced by '
                                   f'{msg.data!r} before it was answered')
        self._pending.append(msg.data)

    def answer(self, exported: Optional[ExportedMap], stamp_ns: int,
               frame_id: str) -> Optional[QueryResult]:
        """Answer the pending query against ``exported``; publish and return the result.

        Without a text encoder or without instance features the answer is empty (an empty
        cloud and a DELETEALL) and a throttled warning says why; None is returned then.
        """
        text = self._pending.popleft()
        self.last_result = None
        if self._encode_text is None:
            self._diagnostics.skip('query_clip_off', f'cannot answer query {text!r}: CLIP is '
                                   'off (no weights found; set clip_checkpoint)')
        elif exported is None:
            self._diagnostics.skip('query_unavailable', f'cannot answer query {text!r}: the '
                                   'map is empty')
        else:
            try:
                self.last_result = query_instances(exported, text, self._encode_text,
                                                   self._top_k)
            except QueryUnavailable as error:
                self._diagnostics.skip('query_unavailable',
                                       f'cannot answer query {text!r}: {error}')
        if self.last_result is None:
            self.clear(stamp_ns, frame_id)
            return None
        result = self.last_result
        labels = [f'#{rank + 1} {text} {similarity:.2f}'
                  for rank, similarity in enumerate(result.similarities.tolist())]
        self._cloud.publish(instance_cloud(exported, stamp_ns, frame_id, result.rows))
        self._markers.publish(instance_marker_array(
            exported, stamp_ns, frame_id, result.rows, labels, namespace=QUERY_NAMESPACE,
            clear_first=True))
        return result

    def clear(self, stamp_ns: int, frame_id: str) -> None:
        """Publish an empty query result (empty cloud, DELETEALL markers)."""
        self._cloud.publish(empty_cloud(stamp_ns, frame_id))
        self._markers.publish(delete_all_markers(stamp_ns, frame_id))
