"""sensor_msgs/CameraInfo <-> pinhole intrinsics ``K``.

Only the pinhole matrix is used: the depth images this package consumes are rectified and
registered, so distortion coefficients are carried as zeros when writing and ignored when
reading.
"""

import numpy as np
from sensor_msgs.msg import CameraInfo

from onlineanyseg_ros.ros.conversions.header import make_header


def _checked_intrinsics(K: np.ndarray, source: str) -> np.ndarray:
    """Return ``K`` as float64 (3, 3) or raise ValueError when it is not a pinhole matrix."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise ValueError(f'{source} must be a finite 3x3 matrix, got {K.tolist()}')
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise ValueError(f'{source} is not a pinhole matrix (fx, fy > 0, last row 0 0 1): '
                         f'{K.tolist()}')
    return K


def camera_info_to_K(msg: CameraInfo) -> np.ndarray:
    """Return float64 ``(3, 3)`` intrinsics (pixels) of a CameraInfo; raise if unset/invalid."""
    return _checked_intrinsics(np.asarray(msg.k, dtype=np.float64).reshape(3, 3),
                               'CameraInfo.k')


def K_to_camera_info(K: np.ndarray, height: int, width: int, stamp_ns: int = 0,
                     frame_id: str = '') -> CameraInfo:
    """Return a rectified plumb_bob CameraInfo for ``(3, 3)`` intrinsics and image size."""
    K = _checked_intrinsics(K, 'K')
    if height <= 0 or width <= 0:
        raise ValueError(f'image size must be positive, got {height}x{width}')
    projection = np.zeros((3, 4))
    projection[:, :3] = K
    return CameraInfo(header=make_header(stamp_ns, frame_id), height=int(height),
                      width=int(width), distortion_model='plumb_bob', d=[0.0] * 5,
                      k=K.reshape(9), r=np.eye(3).reshape(9), p=projection.reshape(12))
