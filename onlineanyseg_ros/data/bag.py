"""Write RGB-D sequences as rosbag2 bags and read them back, with ``rosbags`` only (no rclpy).

A sequence bag holds, per frame i (stamp = ``start_time_ns + i / rate_hz``): colour (rgb8),
depth (16UC1 millimetres, registered to colour: same optical frame and intrinsics), both
camera_infos, ``/tf`` (world -> camera optical frame) and ``/camera/pose`` (PoseStamped);
once, ``/tf_static`` (optical frame -> ``camera_link``, offered transient-local so
``ros2 bag play`` latches it). With precomputed masks it also holds the keyframe bundle the
segmentation node consumes (``keyframe/{color,depth,camera_info,pose,masks,mask_features}``,
all with the depth stamp), so that node can be replayed alone.

Messages are built as ``rosbags`` dataclasses and CDR-serialised by the ROS 2 Kilted
typestore, which is byte-identical to rclpy's CDR (see docs ros2-pip.md).
"""

from dataclasses import dataclass
import os
from pathlib import Path
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                QosTime)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores
from scipy.spatial.transform import Rotation
from tqdm import tqdm
import yaml

from onlineanyseg_ros.core.config import spec, validate_config
from onlineanyseg_ros.core.types import is_rigid_transform, MaskObservation, RgbdFrame

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
# rosbag2 metadata version 9 (Jazzy and newer): QoS profiles stored as a YAML list.
METADATA_VERSION = 9
# Optical frame -> camera_link rotation (camera_link: x forward, y left, z up; REP 103/105).
R_OPTICAL_LINK = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


def _qos(reliable: bool, transient_local: bool, depth: int) -> Qos:
    """Return a rosbags QoS profile; zero durations mean 'unspecified' (infinite) to ROS."""
    zero = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=depth,
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=(QosDurability.TRANSIENT_LOCAL if transient_local
                           else QosDurability.VOLATILE),
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


STREAM_QOS = _qos(reliable=True, transient_local=False, depth=10)
TF_QOS = _qos(reliable=True, transient_local=False, depth=100)
LATCHED_QOS = _qos(reliable=True, transient_local=True, depth=1)


def default_typestore() -> Any:
    """Return the ROS 2 Kilted typestore (the project's ROS wheels), else Lyrical or Jazzy."""
    for name in ('ROS2_KILTED', 'ROS2_LYRICAL', 'ROS2_JAZZY'):
        if hasattr(Stores, name):
            return get_typestore(getattr(Stores, name))
    raise RuntimeError('rosbags has no ROS 2 Jazzy-or-newer typestore; upgrade rosbags')


@dataclass(frozen=True)
class BagLayout:
    """Topic names, frame ids and timing of a sequence bag."""

    rate_hz: float = spec(30.0, 'Frames per second of the written stream: frame i is stamped '
                          'start_time_ns + i / rate_hz (i counts dropped frames too).',
                          0.001, 10000.0)
    start_time_ns: int = spec(1_700_000_000 * 10 ** 9, 'Stamp of the first frame in ns since '
                              'the epoch (not 0: TF reads stamp 0 as "latest").', 1, 2 ** 62)
    world_frame: str = spec('map', 'Fixed frame of the poses (parent on /tf).')
    camera_frame: str = spec('camera_color_optical_frame', 'Optical frame of colour and '
                             'registered depth (child on /tf, header.frame_id of the images).')
    base_frame: str = spec('camera_link', 'Child of the optical frame on /tf_static, x forward '
                           'and z up; the optical frame already has the world as parent.')
    color_topic: str = spec('/camera/color/image_raw', 'sensor_msgs/Image rgb8.')
    color_info_topic: str = spec('/camera/color/camera_info', 'sensor_msgs/CameraInfo.')
    depth_topic: str = spec('/camera/depth/image_raw', 'sensor_msgs/Image 16UC1 millimetres.')
    depth_info_topic: str = spec('/camera/depth/camera_info', 'sensor_msgs/CameraInfo.')
    tf_topic: str = spec('/tf', 'tf2_msgs/TFMessage, world -> optical frame per frame.')
    tf_static_topic: str = spec('/tf_static', 'tf2_msgs/TFMessage, transient-local.')
    pose_topic: str = spec('/camera/pose', 'geometry_msgs/PoseStamped T_world_camera.')
    keyframe_namespace: str = spec('/keyframe', 'Prefix of the keyframe bundle topics.')

    def __post_init__(self) -> None:
        """Validate ranges, non-empty frame ids and absolute topic names."""
        validate_config(self)
        for name in ('world_frame', 'camera_frame', 'base_frame'):
            if not getattr(self, name):
                raise ValueError(f'BagLayout.{name} must not be empty')
        for name in self.topic_fields():
            if not getattr(self, name).startswith('/'):
                raise ValueError(f'BagLayout.{name} must be an absolute topic name, got '
                                 f'{getattr(self, name)!r}')

    @staticmethod
    def topic_fields() -> Tuple[str, ...]:
        """Return the names of the topic fields."""
        return ('color_topic', 'color_info_topic', 'depth_topic', 'depth_info_topic',
                'tf_topic', 'tf_static_topic', 'pose_topic', 'keyframe_namespace')

    def keyframe_topic(self, leaf: str) -> str:
        """Return the keyframe topic ``leaf`` (color, depth, camera_info, pose, masks, ...)."""
        return f'{self.keyframe_namespace.rstrip("/")}/{leaf}'


# --- numpy -> rosbags message builders -----------------------------------------------------

def _header(ts: Any, stamp_ns: int, frame_id: str) -> Any:
    seconds, nanoseconds = divmod(int(stamp_ns), 10 ** 9)
    time_msg = ts.types['builtin_interfaces/msg/Time'](sec=seconds, nanosec=nanoseconds)
    return ts.types['std_msgs/msg/Header'](stamp=time_msg, frame_id=frame_id)


def image_message(ts: Any, array: np.ndarray, encoding: str, stamp_ns: int,
                  frame_id: str) -> Any:
    """Build a sensor_msgs/Image from ``array`` (H, W[, C]); little-endian, unpadded rows."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == '>':
        array = array.astype(array.dtype.newbyteorder('<'))
    height, width = array.shape[:2]
    step = width * (array.itemsize * (array.shape[2] if array.ndim == 3 else 1))
    return ts.types['sensor_msgs/msg/Image'](
        header=_header(ts, stamp_ns, frame_id), height=height, width=width, encoding=encoding,
        is_bigendian=0, step=step, data=array.reshape(-1).view(np.uint8))


def camera_info_message(ts: Any, K: np.ndarray, height: int, width: int, stamp_ns: int,
                        frame_id: str) -> Any:
    """Build an undistorted pinhole sensor_msgs/CameraInfo from 3x3 ``K`` (pixels)."""
    K = np.asarray(K, dtype=np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = ts.types['sensor_msgs/msg/RegionOfInterest'](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return ts.types['sensor_msgs/msg/CameraInfo'](
        header=_header(ts, stamp_ns, frame_id), height=height, width=width,
        distortion_model='plumb_bob', d=np.zeros(5), k=K.reshape(9), r=np.eye(3).reshape(9),
        p=P.reshape(12), binning_x=0, binning_y=0, roi=roi)


def _vector_and_quaternion(ts: Any, T: np.ndarray) -> Tuple[Any, Any]:
    x, y, z, w = Rotation.from_matrix(np.asarray(T)[:3, :3]).as_quat()
    quaternion = ts.types['geometry_msgs/msg/Quaternion'](x=x, y=y, z=z, w=w)
    tx, ty, tz = (float(v) for v in np.asarray(T)[:3, 3])
    return (tx, ty, tz), quaternion


def pose_stamped_message(ts: Any, T_world_camera: np.ndarray, stamp_ns: int,
                         frame_id: str) -> Any:
    """Build a geometry_msgs/PoseStamped (4x4 camera-to-``frame_id`` transform, metres)."""
    (x, y, z), quaternion = _vector_and_quaternion(ts, T_world_camera)
    pose = ts.types['geometry_msgs/msg/Pose'](
        position=ts.types['geometry_msgs/msg/Point'](x=x, y=y, z=z), orientation=quaternion)
    return ts.types['geometry_msgs/msg/PoseStamped'](header=_header(ts, stamp_ns, frame_id),
                                                     pose=pose)


def tf_message(ts: Any, transforms: Sequence[Tuple[str, str, np.ndarray]],
               stamp_ns: int) -> Any:
    """Build a tf2_msgs/TFMessage from ``(parent, child, T_parent_child 4x4)`` triples."""
    stamped = []
    for parent, child, T in transforms:
        (x, y, z), quaternion = _vector_and_quaternion(ts, T)
        transform = ts.types['geometry_msgs/msg/Transform'](
            translation=ts.types['geometry_msgs/msg/Vector3'](x=x, y=y, z=z),
            rotation=quaternion)
        stamped.append(ts.types['geometry_msgs/msg/TransformStamped'](
            header=_header(ts, stamp_ns, parent), child_frame_id=child, transform=transform))
    return ts.types['tf2_msgs/msg/TFMessage'](transforms=stamped)


def depth_to_millimetres(depth_m: np.ndarray) -> np.ndarray:
    """Convert float32 metres (H, W) to uint16 mm; non-finite or beyond 65.535 m -> 0."""
    depth_mm = np.rint(np.nan_to_num(depth_m, nan=0.0, posinf=0.0, neginf=0.0) * 1000.0)
    depth_mm[(depth_mm < 0) | (depth_mm > 65535)] = 0
    return depth_mm.astype(np.uint16)


# --- rosbags message -> numpy decoders -----------------------------------------------------

_ENCODINGS = {'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4),
              'bgra8': (np.uint8, 4), 'mono8': (np.uint8, 1), '8UC1': (np.uint8, 1),
              'mono16': (np.uint16, 1), '16UC1': (np.uint16, 1), '32FC1': (np.float32, 1)}


def image_to_array(msg: Any) -> np.ndarray:
    """Return a sensor_msgs/Image as a native-endian (H, W) or (H, W, C) array (a copy)."""
    if msg.encoding not in _ENCODINGS:
        raise ValueError(f'unsupported image encoding {msg.encoding!r}')
    dtype, channels = _ENCODINGS[msg.encoding]
    dtype = np.dtype(dtype).newbyteorder('>' if msg.is_bigendian else '<')
    row_bytes = msg.width * channels * dtype.itemsize
    rows = np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)[:, :row_bytes]
    array = np.ascontiguousarray(rows).view(dtype).astype(dtype.newbyteorder('='))
    return array.reshape((msg.height, msg.width, channels) if channels > 1
                         else (msg.height, msg.width))


def camera_info_to_K(msg: Any) -> np.ndarray:
    """Return the float64 3x3 intrinsics of a sensor_msgs/CameraInfo."""
    return np.asarray(msg.k, dtype=np.float64).reshape(3, 3).copy()


def _matrix(translation: Any, rotation: Any) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat([rotation.x, rotation.y, rotation.z, rotation.w]).as_matrix()
    T[:3, 3] = [translation.x, translation.y, translation.z]
    return T


def pose_to_matrix(pose: Any) -> np.ndarray:
    """Return a geometry_msgs/Pose as a float64 4x4 transform (child-to-parent, metres)."""
    return _matrix(pose.position, pose.orientation)


def transform_to_matrix(transform: Any) -> np.ndarray:
    """Return a geometry_msgs/Transform as a float64 4x4 transform ``T_parent_child``."""
    return _matrix(transform.translation, transform.rotation)


def deserialize(cdr: bytes, msgtype: str, typestore: Optional[Any] = None) -> Any:
    """Decode CDR bytes of ``msgtype`` (e.g. 'sensor_msgs/msg/Image') into a rosbags message."""
    return (typestore or default_typestore()).deserialize_cdr(cdr, msgtype)


# --- writing --------------------------------------------------------------------------------

MaskLookup = Callable[[RgbdFrame], Optional[MaskObservation]]


# Keyframe bundle leaves and their types; pose, camera_info, color and depth repeat the
# frame's own messages (same bytes), masks and mask_features are added.
KEYFRAME_TYPES = {'pose': 'geometry_msgs/msg/PoseStamped',
                  'camera_info': 'sensor_msgs/msg/CameraInfo',
                  'color': 'sensor_msgs/msg/Image', 'depth': 'sensor_msgs/msg/Image',
                  'masks': 'sensor_msgs/msg/Image', 'mask_features': 'sensor_msgs/msg/Image'}


def _topic_types(layout: BagLayout, with_keyframes: bool) -> List[Tuple[str, str, Qos]]:
    topics = [(layout.tf_static_topic, 'tf2_msgs/msg/TFMessage', LATCHED_QOS),
              (layout.tf_topic, 'tf2_msgs/msg/TFMessage', TF_QOS),
              (layout.pose_topic, 'geometry_msgs/msg/PoseStamped', STREAM_QOS),
              (layout.color_info_topic, 'sensor_msgs/msg/CameraInfo', STREAM_QOS),
              (layout.color_topic, 'sensor_msgs/msg/Image', STREAM_QOS),
              (layout.depth_info_topic, 'sensor_msgs/msg/CameraInfo', STREAM_QOS),
              (layout.depth_topic, 'sensor_msgs/msg/Image', STREAM_QOS)]
    if with_keyframes:
        topics += [(layout.keyframe_topic(leaf), msgtype, STREAM_QOS)
                   for leaf, msgtype in KEYFRAME_TYPES.items()]
    return topics


def _frame_messages(ts: Any, layout: BagLayout, frame: RgbdFrame, stamp_ns: int,
                    masks: Optional[MaskObservation]) -> Dict[str, Any]:
    """Return the frame's messages by role: tf, pose, camera_info, color, depth[, masks...]."""
    camera = layout.camera_frame
    messages = {
        'tf': tf_message(ts, [(layout.world_frame, camera, frame.T_world_camera)], stamp_ns),
        'pose': pose_stamped_message(ts, frame.T_world_camera, stamp_ns, layout.world_frame),
        'camera_info': camera_info_message(ts, frame.K, *frame.shape, stamp_ns, camera),
        'color': image_message(ts, frame.color, 'rgb8', stamp_ns, camera),
        'depth': image_message(ts, depth_to_millimetres(frame.depth), '16UC1', stamp_ns,
                               camera)}
    if masks is None:
        return messages
    if masks.labels.shape != frame.shape:
        raise ValueError(f'mask labels {masks.labels.shape} do not match the depth image '
                         f'{frame.shape} of frame {frame.frame_index}')
    if masks.labels.size and (masks.labels.min() < 0 or masks.labels.max() > 65535):
        raise ValueError(f'mask labels of frame {frame.frame_index} do not fit mono16')
    features = masks.features
    if features is None:  # no embeddings: one empty row per mask keeps the label mapping
        features = np.zeros((masks.num_masks, 0), dtype=np.float32)
    messages['masks'] = image_message(ts, masks.labels.astype(np.uint16), 'mono16', stamp_ns,
                                      camera)
    messages['mask_features'] = image_message(ts, features.astype(np.float32), '32FC1',
                                              stamp_ns, camera)
    return messages


def _write_frames(writer: Writer, ts: Any, layout: BagLayout, frames: Iterable[RgbdFrame],
                  keyframe_masks: Optional[MaskLookup], bar: tqdm) -> Dict[str, Any]:
    connections = {topic: writer.add_connection(topic, msgtype, typestore=ts,
                                                offered_qos_profiles=[qos])
                   for topic, msgtype, qos in _topic_types(layout, keyframe_masks is not None)}
    T_optical_link = np.eye(4)
    T_optical_link[:3, :3] = R_OPTICAL_LINK
    static = tf_message(ts, [(layout.camera_frame, layout.base_frame, T_optical_link)],
                        layout.start_time_ns)
    writer.write(connections[layout.tf_static_topic], layout.start_time_ns,
                 ts.serialize_cdr(static, 'tf2_msgs/msg/TFMessage'))
    counts = {'frames_in': 0, 'frames_written': 0, 'dropped_invalid_pose': 0, 'keyframes': 0}
    for index, frame in enumerate(frames):
        counts['frames_in'] += 1
        bar.update(1)
        # RgbdFrame validates its pose, but the array is mutable: never write a broken pose.
        if not is_rigid_transform(frame.T_world_camera):
            counts['dropped_invalid_pose'] += 1
            continue
        stamp_ns = layout.start_time_ns + round(index * 1e9 / layout.rate_hz)
        masks = keyframe_masks(frame) if keyframe_masks is not None else None
        payload = {role: ts.serialize_cdr(msg, msg.__msgtype__) for role, msg in
                   _frame_messages(ts, layout, frame, stamp_ns, masks).items()}
        topics = [(layout.tf_topic, 'tf'), (layout.pose_topic, 'pose'),
                  (layout.color_info_topic, 'camera_info'), (layout.color_topic, 'color'),
                  (layout.depth_info_topic, 'camera_info'), (layout.depth_topic, 'depth')]
        if masks is not None:
            topics += [(layout.keyframe_topic(leaf), leaf) for leaf in KEYFRAME_TYPES]
            counts['keyframes'] += 1
        for topic, role in topics:
            writer.write(connections[topic], stamp_ns, payload[role])
        counts['frames_written'] += 1
    return counts


def write_sequence_bag(frames: Iterable[RgbdFrame], out_path: os.PathLike,
                       storage: str = 'mcap', layout: Optional[BagLayout] = None,
                       keyframe_masks: Optional[MaskLookup] = None,
                       total: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
    """Write ``frames`` as a rosbag2 directory at ``out_path`` (which must not exist).

    Args:
        frames: RgbdFrames in stream order; frame i is stamped ``start + i / rate``.
        out_path: bag directory to create; it appears only once complete (atomic rename).
        storage: 'mcap' or 'sqlite3'.
        layout: topic names, frame ids and timing (defaults: ``BagLayout()``).
        keyframe_masks: returns a frame's precomputed masks, or None when the frame is no
            keyframe; when given, the keyframe bundle topics are written too.
        total: frame count for the progress bar (default: ``len(frames)`` when defined).
        progress: show a tqdm progress bar.

    Returns:
        Summary: path, storage, frames_in, frames_written, dropped_invalid_pose, keyframes,
        messages, topics ``{topic: count}``, duration_s, size_bytes, elapsed_s.

    """
    if storage not in STORAGES:
        raise ValueError(f'storage must be one of {sorted(STORAGES)}, got {storage!r}')
    layout = layout or BagLayout()
    out_path = Path(out_path)
    if out_path.exists():
        raise FileExistsError(f'{out_path} exists already; refusing to overwrite a bag')
    if total is None and hasattr(frames, '__len__'):
        total = len(frames)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{out_path.name}.', dir=out_path.parent))
    started = time.perf_counter()
    try:
        with Writer(staging / out_path.name, version=METADATA_VERSION,
                    storage_plugin=STORAGES[storage]) as writer, \
                tqdm(total=total, unit='frame', desc='bag', disable=not progress) as bar:
            # A map, not null, keeps custom_data a mapping for rosbag2's metadata parser.
            writer.set_custom_data('generator', 'onlineanyseg_ros')
            counts = _write_frames(writer, default_typestore(), layout, frames,
                                   keyframe_masks, bar)
        os.replace(staging / out_path.name, out_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    info = bag_info(out_path)
    return {'path': str(out_path), 'storage': storage, **counts,
            'messages': info['message_count'],
            'topics': {name: topic['count'] for name, topic in info['topics'].items()},
            'duration_s': info['duration_s'],
            'size_bytes': sum(p.stat().st_size for p in out_path.iterdir()),
            'elapsed_s': time.perf_counter() - started}


# --- reading --------------------------------------------------------------------------------

def read_bag(path: os.PathLike, topics: Optional[Sequence[str]] = None
             ) -> Iterator[Tuple[str, str, int, bytes]]:
    """Yield ``(topic, msgtype, stamp_ns, cdr_bytes)`` in time order, optionally filtered."""
    with Reader(Path(path)) as reader:
        connections = [c for c in reader.connections if topics is None or c.topic in topics]
        if not connections:
            return
        for connection, stamp_ns, data in reader.messages(connections=connections):
            yield connection.topic, connection.msgtype, stamp_ns, bytes(data)


def qos_to_dict(qos: Qos) -> Dict[str, Any]:
    """Return a rosbags QoS profile as ``{history, depth, reliability, durability}`` names."""
    return {'history': qos.history.name.lower(), 'depth': qos.depth,
            'reliability': qos.reliability.name.lower(),
            'durability': qos.durability.name.lower()}


def bag_info(path: os.PathLike) -> Dict[str, Any]:
    """Summarise a bag: storage, message_count, start/end ns, duration_s, per-topic info.

    ``topics`` maps each topic name to ``{type, count, qos}`` where ``qos`` is a list of
    :func:`qos_to_dict` profiles offered when it was recorded.
    """
    with Reader(Path(path)) as reader:
        topics = {}
        for connection in reader.connections:
            topic = topics.setdefault(connection.topic, {'type': connection.msgtype,
                                                         'count': 0, 'qos': []})
            topic['count'] += connection.msgcount
            topic['qos'] += [qos_to_dict(q) for q in
                             getattr(connection.ext, 'offered_qos_profiles', [])]
        count = reader.message_count
        start = reader.start_time if count else 0
        duration = reader.duration if count else 0
    metadata_path = Path(path) / 'metadata.yaml'
    metadata = (yaml.safe_load(metadata_path.read_text())['rosbag2_bagfile_information']
                if metadata_path.is_file() else {})
    return {'path': str(path), 'storage': metadata.get('storage_identifier', ''),
            'version': metadata.get('version', 0), 'message_count': count,
            'start_ns': start, 'end_ns': start + duration, 'duration_s': duration / 1e9,
            'topics': topics}
