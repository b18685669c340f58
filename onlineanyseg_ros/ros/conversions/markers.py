"""Instances -> visualization_msgs/MarkerArray (boxes and id/label texts) and deletions.

Marker ids equal instance ids, so an instance keeps its markers across updates; boxes and
texts live in the namespaces ``<namespace>/boxes`` and ``<namespace>/labels``.
"""

from typing import Optional, Sequence

from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, Vector3
import numpy as np
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from onlineanyseg_ros.ros.conversions.header import make_header

_INT32_MAX = 2 ** 31 - 1
_TEXT_COLOR = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)


def box_namespace(namespace: str) -> str:
    """Return the marker namespace of the instance boxes."""
    return f'{namespace}/boxes'


def label_namespace(namespace: str) -> str:
    """Return the marker namespace of the instance id/label texts."""
    return f'{namespace}/labels'


def _checked_ids(instance_ids) -> np.ndarray:
    """Return ids as int64 ``(N,)`` or raise ValueError when one cannot be a marker id."""
    ids = np.asarray(instance_ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() > _INT32_MAX):
        raise ValueError(f'instance ids must lie in [0, {_INT32_MAX}] to be marker ids')
    if np.unique(ids).size != ids.size:
        raise ValueError('instance ids must be unique')
    return ids


def _unit_colors(colors: np.ndarray, count: int) -> np.ndarray:
    """Return ``(N, 3)`` colours in [0, 1] from uint8 [0, 255] or float [0, 1] input."""
    colors = np.asarray(colors)
    if colors.shape != (count, 3):
        raise ValueError(f'colours must be ({count}, 3), got {colors.shape}')
    if colors.dtype == np.uint8:
        return colors.astype(np.float64) / 255.0
    return np.clip(colors.astype(np.float64), 0.0, 1.0)


def _pose_at(position) -> Pose:
    """Return an unrotated Pose at ``(x, y, z)`` metres."""
    x, y, z = position
    return Pose(position=Point(x=x, y=y, z=z))


def instance_markers(instance_ids, centers: np.ndarray, sizes: np.ndarray, colors: np.ndarray,
                     labels: Optional[Sequence[str]] = None, stamp_ns: int = 0,
                     frame_id: str = '', namespace: str = 'instances', box_alpha: float = 0.35,
                     text_height_m: float = 0.1, clear_first: bool = False) -> MarkerArray:
    """Return one translucent CUBE and one TEXT_VIEW_FACING marker per instance.

    Args:
        instance_ids: ``(N,)`` unique ids in [0, 2^31), used as marker ids.
        centers: float ``(N, 3)`` box centres in ``frame_id`` (metres).
        sizes: float ``(N, 3)`` axis-aligned box edge lengths (metres).
        colors: ``(N, 3)`` uint8 RGB or float RGB in [0, 1].
        labels: optional ``N`` strings shown after the id.
        stamp_ns: header stamp (nanoseconds).
        frame_id: frame of centres and boxes.
        namespace: prefix of the box and label namespaces.
        box_alpha: box opacity in [0, 1].
        text_height_m: text height (metres), drawn above the box.
        clear_first: start with a DELETEALL marker, so the array replaces what RViz shows
            (for latched topics that must carry the complete state).

    """
    ids = _checked_ids(instance_ids)
    count = ids.size
    centers = np.asarray(centers, dtype=np.float64).reshape(count, 3)
    sizes = np.asarray(sizes, dtype=np.float64).reshape(count, 3)
    rgb = _unit_colors(colors, count)
    if labels is not None and len(labels) != count:
        raise ValueError(f'labels must have {count} entries, got {len(labels)}')
    header = make_header(stamp_ns, frame_id)
    markers = list(delete_all_markers(stamp_ns, frame_id).markers) if clear_first else []
    for index, instance_id in enumerate(ids.tolist()):
        center = centers[index].tolist()
        size = np.maximum(sizes[index], 1e-3).tolist()
        r, g, b = rgb[index].tolist()
        markers.append(Marker(
            header=header, ns=box_namespace(namespace), id=instance_id, type=Marker.CUBE,
            action=Marker.ADD, pose=_pose_at(center),
            scale=Vector3(x=size[0], y=size[1], z=size[2]),
            color=ColorRGBA(r=r, g=g, b=b, a=float(box_alpha)), lifetime=Duration()))
        label = labels[index] if labels is not None else ''
        text_position = [center[0], center[1], center[2] + 0.5 * size[2] + text_height_m]
        markers.append(Marker(
            header=header, ns=label_namespace(namespace), id=instance_id,
            type=Marker.TEXT_VIEW_FACING, action=Marker.ADD, pose=_pose_at(text_position),
            scale=Vector3(z=float(text_height_m)), color=_TEXT_COLOR,
            text=f'{instance_id} {label}'.rstrip(), lifetime=Duration()))
    return MarkerArray(markers=markers)


def delete_instance_markers(instance_ids, stamp_ns: int = 0, frame_id: str = '',
                            namespace: str = 'instances') -> MarkerArray:
    """Return DELETE markers for the boxes and texts of instances that no longer exist."""
    header = make_header(stamp_ns, frame_id)
    return MarkerArray(markers=[
        Marker(header=header, ns=marker_namespace, id=instance_id, action=Marker.DELETE)
        for instance_id in _checked_ids(instance_ids).tolist()
        for marker_namespace in (box_namespace(namespace), label_namespace(namespace))])


def delete_all_markers(stamp_ns: int = 0, frame_id: str = '') -> MarkerArray:
    """Return a MarkerArray with one DELETEALL marker (clears every marker of the topic)."""
    return MarkerArray(markers=[Marker(header=make_header(stamp_ns, frame_id),
                                       action=Marker.DELETEALL)])
