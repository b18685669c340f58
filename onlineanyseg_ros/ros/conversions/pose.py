"""geometry_msgs Pose, PoseStamped, Transform(Stamped) <-> float64 ``(4, 4)`` transforms.

A Pose in frame ``a`` describing body ``b`` is ``T_a_b`` (maps points in ``b`` to ``a``); a
TransformStamped with ``header.frame_id = a`` and ``child_frame_id = b`` is also ``T_a_b``.
Non-finite values and non-unit quaternions raise ValueError, as do non-rigid matrices.
"""

from geometry_msgs.msg import (Point, Pose, PoseStamped, Quaternion, Transform,
                               TransformStamped, Vector3)
import numpy as np

from onlineanyseg_ros.core.types import is_rigid_transform
from onlineanyseg_ros.ros.conversions.header import make_header
from onlineanyseg_ros.ros.conversions.quaternion import (rotation_to_quaternion,
                                                         transform_matrix)


def _checked_rigid(T: np.ndarray) -> np.ndarray:
    """Return ``T`` as float64 (4, 4) or raise ValueError when it is not a rigid transform."""
    T = np.asarray(T, dtype=np.float64)
    if not is_rigid_transform(T):
        raise ValueError('transform must be a finite rigid 4x4 matrix (orthonormal rotation, '
                         'last row 0 0 0 1)')
    return T


def _quaternion_xyzw(quaternion: Quaternion) -> tuple:
    return (quaternion.x, quaternion.y, quaternion.z, quaternion.w)


def _quaternion_message(T: np.ndarray) -> Quaternion:
    x, y, z, w = rotation_to_quaternion(T[:3, :3])
    return Quaternion(x=float(x), y=float(y), z=float(z), w=float(w))


def pose_to_matrix(pose: Pose) -> np.ndarray:
    """Return the float64 ``(4, 4)`` transform of a ``geometry_msgs/Pose``."""
    position = pose.position
    return transform_matrix((position.x, position.y, position.z),
                            _quaternion_xyzw(pose.orientation))


def matrix_to_pose(T: np.ndarray) -> Pose:
    """Return the ``geometry_msgs/Pose`` of a rigid ``(4, 4)`` transform."""
    T = _checked_rigid(T)
    x, y, z = (float(value) for value in T[:3, 3])
    return Pose(position=Point(x=x, y=y, z=z), orientation=_quaternion_message(T))


def pose_stamped_to_matrix(msg: PoseStamped) -> np.ndarray:
    """Return ``T_frame_body`` of a PoseStamped (``frame`` = ``msg.header.frame_id``)."""
    return pose_to_matrix(msg.pose)


def matrix_to_pose_stamped(T: np.ndarray, stamp_ns: int, frame_id: str) -> PoseStamped:
    """Return a PoseStamped of ``T_frame_body`` expressed in ``frame_id``."""
    return PoseStamped(header=make_header(stamp_ns, frame_id), pose=matrix_to_pose(T))


def transform_to_matrix(transform: Transform) -> np.ndarray:
    """Return the float64 ``(4, 4)`` transform of a ``geometry_msgs/Transform``."""
    translation = transform.translation
    return transform_matrix((translation.x, translation.y, translation.z),
                            _quaternion_xyzw(transform.rotation))


def transform_stamped_to_matrix(msg: TransformStamped) -> np.ndarray:
    """Return ``T_parent_child`` of a TransformStamped (parent = ``header.frame_id``)."""
    return transform_to_matrix(msg.transform)


def matrix_to_transform_stamped(T_parent_child: np.ndarray, stamp_ns: int, parent_frame: str,
                                child_frame: str) -> TransformStamped:
    """Return the TransformStamped that carries ``T_parent_child``."""
    T = _checked_rigid(T_parent_child)
    x, y, z = (float(value) for value in T[:3, 3])
    transform = Transform(translation=Vector3(x=x, y=y, z=z), rotation=_quaternion_message(T))
    return TransformStamped(header=make_header(stamp_ns, parent_frame),
                            child_frame_id=child_frame, transform=transform)
