"""Typed frame bundles shared by every layer.

Conventions (all layers):
- images are row-major ``(H, W)``; pixel ``(v, u)`` = (row, column);
- camera frame = OpenCV optical (x right, y down, z forward);
- ``T_a_b`` is a 4x4 float64 homogeneous transform that maps points in frame ``b`` to
  frame ``a`` (``T_world_camera`` = camera-to-world);
- depth is float32 metres, 0 = invalid;
- mask label images hold 0 = no mask and k >= 1 = mask k; features row k-1 belongs to mask k.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np


def is_rigid_transform(T: np.ndarray, tolerance: float = 1e-3) -> bool:
    """Return True when ``T`` (4x4) is finite, has an orthonormal rotation and det +1."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=tolerance):
        return False
    if abs(np.linalg.det(R) - 1.0) > tolerance:
        return False
    return bool(np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=tolerance))


@dataclass(frozen=True)
class RgbdFrame:
    """One registered RGB-D frame with its pose.

    Attributes:
        color: uint8 ``(H, W, 3)`` RGB, same size as ``depth``.
        depth: float32 ``(H, W)`` metres, 0 = invalid.
        K: float64 ``(3, 3)`` pinhole intrinsics of ``depth`` (pixels).
        T_world_camera: float64 ``(4, 4)`` camera (optical) to world.
        stamp_ns: acquisition time in nanoseconds.
        frame_index: position in the source sequence (0-based), -1 when unknown.

    """

    color: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    T_world_camera: np.ndarray
    stamp_ns: int = 0
    frame_index: int = -1

    def __post_init__(self) -> None:
        """Validate shapes and dtypes at the boundary."""
        if self.depth.ndim != 2 or self.depth.dtype != np.float32:
            raise ValueError(f'depth must be float32 (H, W), got {self.depth.dtype} '
                             f'{self.depth.shape}')
        if self.color.shape != self.depth.shape + (3,) or self.color.dtype != np.uint8:
            raise ValueError(f'color must be uint8 {self.depth.shape + (3,)}, got '
                             f'{self.color.dtype} {self.color.shape}')
        if np.asarray(self.K).shape != (3, 3):
            raise ValueError(f'K must be 3x3, got {np.asarray(self.K).shape}')
        if not is_rigid_transform(self.T_world_camera):
            raise ValueError('T_world_camera must be a finite rigid 4x4 transform')

    @property
    def shape(self) -> tuple:
        """Image size ``(H, W)``."""
        return self.depth.shape


@dataclass(frozen=True)
class MaskObservation:
    """Class-agnostic 2D masks of one frame, aligned with its depth image.

    Attributes:
        labels: int32 ``(H, W)``, 0 = no mask, k = mask k (1..N; ids may be sparse).
        features: float32 ``(N, D)`` per-mask embeddings (row k-1 = mask k), or None.
        scores: float32 ``(N,)`` per-mask confidences in [0, 1], or None.

    """

    labels: np.ndarray
    features: Optional[np.ndarray] = None
    scores: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        """Validate shapes at the boundary."""
        if self.labels.ndim != 2:
            raise ValueError(f'labels must be (H, W), got {self.labels.shape}')
        if self.features is not None:
            if self.features.ndim != 2:
                raise ValueError(f'features must be (N, D), got {self.features.shape}')
            if self.labels.size and int(self.labels.max()) > self.features.shape[0]:
                raise ValueError(f'labels reach {int(self.labels.max())} but features has '
                                 f'{self.features.shape[0]} rows')
        if self.scores is not None and self.scores.ndim != 1:
            raise ValueError(f'scores must be (N,), got {self.scores.shape}')

    @property
    def num_masks(self) -> int:
        """Highest mask id present (0 when the frame has no mask)."""
        return int(self.labels.max()) if self.labels.size else 0
