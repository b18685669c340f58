"""Quaternion math in numpy (ROS-free), ``(x, y, z, w)`` order as in geometry_msgs.

Quaternions are float64 ``(4,)``; rotations are float64 ``(3, 3)``; transforms ``T_a_b`` are
float64 ``(4, 4)`` mapping points in frame ``b`` into frame ``a``.
"""

import numpy as np

# Messages carry float64 quaternions normalised by their producer; a larger error means a
# corrupt or uninitialised orientation (e.g. all zeros), which must not become a pose.
UNIT_NORM_TOLERANCE = 1e-3


def checked_unit_quaternion(quaternion_xyzw) -> np.ndarray:
    """Return the quaternion renormalised, or raise ValueError when non-finite or non-unit."""
    quaternion = np.asarray(quaternion_xyzw, dtype=np.float64).reshape(4)
    if not np.all(np.isfinite(quaternion)):
        raise ValueError(f'quaternion {quaternion.tolist()} is not finite')
    norm = float(np.linalg.norm(quaternion))
    if abs(norm - 1.0) > UNIT_NORM_TOLERANCE:
        raise ValueError(f'quaternion {quaternion.tolist()} is not unit length (norm {norm:.6g})')
    return quaternion / norm


def quaternion_to_rotation(quaternion_xyzw) -> np.ndarray:
    """Return the float64 ``(3, 3)`` rotation of a unit ``(x, y, z, w)`` quaternion."""
    x, y, z, w = checked_unit_quaternion(quaternion_xyzw)
    return np.array([
        [1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - z * w), 2.0 * (x * z + y * w)],
        [2.0 * (x * y + z * w), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - x * w)],
        [2.0 * (x * z - y * w), 2.0 * (y * z + x * w), 1.0 - 2.0 * (x * x + y * y)],
    ])


def rotation_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """Return the unit ``(x, y, z, w)`` quaternion (w >= 0) of a ``(3, 3)`` rotation."""
    R = np.asarray(rotation, dtype=np.float64)
    # Shepperd's method: take the square root of the largest of the four candidates,
    # which keeps the division well conditioned for every rotation.
    trace = np.trace(R)
    candidates = np.array([R[0, 0], R[1, 1], R[2, 2], trace])
    largest = int(np.argmax(candidates))
    if largest == 3:
        w = 0.5 * np.sqrt(1.0 + trace)
        x = (R[2, 1] - R[1, 2]) / (4.0 * w)
        y = (R[0, 2] - R[2, 0]) / (4.0 * w)
        z = (R[1, 0] - R[0, 1]) / (4.0 * w)
    elif largest == 0:
        x = 0.5 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        y = (R[0, 1] + R[1, 0]) / (4.0 * x)
        z = (R[0, 2] + R[2, 0]) / (4.0 * x)
        w = (R[2, 1] - R[1, 2]) / (4.0 * x)
    elif largest == 1:
        y = 0.5 * np.sqrt(1.0 - R[0, 0] + R[1, 1] - R[2, 2])
        x = (R[0, 1] + R[1, 0]) / (4.0 * y)
        z = (R[1, 2] + R[2, 1]) / (4.0 * y)
        w = (R[0, 2] - R[2, 0]) / (4.0 * y)
    else:
        z = 0.5 * np.sqrt(1.0 - R[0, 0] - R[1, 1] + R[2, 2])
        x = (R[0, 2] + R[2, 0]) / (4.0 * z)
        y = (R[1, 2] + R[2, 1]) / (4.0 * z)
        w = (R[1, 0] - R[0, 1]) / (4.0 * z)
    quaternion = np.array([x, y, z, w])
    quaternion /= np.linalg.norm(quaternion)
    return -quaternion if quaternion[3] < 0 else quaternion


def slerp(q0_xyzw: np.ndarray, q1_xyzw: np.ndarray, fraction: float) -> np.ndarray:
    """Spherically interpolate unit quaternions along the shorter arc; fraction in [0, 1]."""
    q0 = np.asarray(q0_xyzw, dtype=np.float64)
    q1 = np.asarray(q1_xyzw, dtype=np.float64)
    cos_angle = float(np.dot(q0, q1))
    if cos_angle < 0.0:
        q1, cos_angle = -q1, -cos_angle
    if cos_angle > 1.0 - 1e-12:
        # Nearly equal rotations: lerp is exact to rounding and avoids dividing by sin(0).
        blended = (1.0 - fraction) * q0 + fraction * q1
        return blended / np.linalg.norm(blended)
    angle = np.arccos(min(cos_angle, 1.0))
    sin_angle = np.sin(angle)
    return (np.sin((1.0 - fraction) * angle) * q0 + np.sin(fraction * angle) * q1) / sin_angle


def transform_matrix(translation, quaternion_xyzw) -> np.ndarray:
    """Return the float64 ``(4, 4)`` transform of a translation ``(3,)`` and unit quaternion."""
    translation = np.asarray(translation, dtype=np.float64).reshape(3)
    if not np.all(np.isfinite(translation)):
        raise ValueError(f'translation {translation.tolist()} is not finite')
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation(quaternion_xyzw)
    T[:3, 3] = translation
    return T


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Return the inverse of a rigid ``(4, 4)`` transform (``T_b_a`` from ``T_a_b``)."""
    inverse = np.eye(4)
    rotation_transposed = T[:3, :3].T
    inverse[:3, :3] = rotation_transposed
    inverse[:3, 3] = -rotation_transposed @ T[:3, 3]
    return inverse
