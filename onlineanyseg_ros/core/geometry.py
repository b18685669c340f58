"""Pinhole back-projection and rigid transforms in torch (CPU or CUDA).

Frames follow ``core.types``: the camera frame is OpenCV optical (x right, y down, z
forward) and ``T_world_camera`` maps camera points to the world frame. Distances are metres.
"""

from typing import Tuple, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def as_tensor(value: ArrayLike, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Return ``value`` as a tensor on ``device`` with ``dtype`` (no copy when it already is).

    Host arrays go to CUDA through pinned memory without blocking: a copy from pageable
    memory would make the host wait for the device (a sync per upload).
    """
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype)
    array = np.asarray(value)
    if not array.flags.writeable:
        array = array.copy()  # torch warns about tensors over read-only arrays
    host = torch.as_tensor(array, dtype=dtype)
    if torch.device(device).type == 'cuda':
        return host.pin_memory().to(device, non_blocking=True)
    return host


def transform_points(T_a_b: ArrayLike, points_b: torch.Tensor) -> torch.Tensor:
    """Map points from frame ``b`` to frame ``a``.

    Args:
        T_a_b: ``(4, 4)`` rigid transform (numpy or torch, any float dtype).
        points_b: ``(..., 3)`` float points in frame ``b`` on any device.

    Returns:
        ``(..., 3)`` points in frame ``a``, same dtype and device as ``points_b``. The
        product is evaluated in float64 so that large world coordinates keep sub-millimetre
        precision before the cast back.

    """
    T = as_tensor(T_a_b, points_b.device, torch.float64)
    rotated = points_b.to(torch.float64) @ T[:3, :3].T
    return (rotated + T[:3, 3]).to(points_b.dtype)


def camera_center(T_world_camera: ArrayLike, device: torch.device,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return the camera's optical centre in the world frame, ``(3,)`` metres on ``device``."""
    return as_tensor(T_world_camera, device, torch.float64)[:3, 3].to(dtype)


def backproject(depth: ArrayLike, K: ArrayLike, T_world_camera: ArrayLike, near: float,
                far: float, device: Union[str, torch.device, None] = None,
                dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Back-project a depth image to world points.

    Camera point of pixel (row v, column u) with depth z: ``X = (u - cx) / fx * z``,
    ``Y = (v - cy) / fy * z``, ``Z = z``; then ``T_world_camera`` maps it to the world.

    Args:
        depth: ``(H, W)`` float depth in metres (numpy or torch); 0 / NaN = invalid.
        K: ``(3, 3)`` pinhole intrinsics in pixels.
        T_world_camera: ``(4, 4)`` camera (optical) to world.
        near: depths ``<= near`` are invalid (metres).
        far: depths ``>= far`` are invalid (metres).
        device: where the outputs live; defaults to the device of ``depth`` (CPU for numpy).
        dtype: float dtype of the returned points.

    Returns:
        ``points_world`` ``(H, W, 3)`` ``dtype`` world points (zero where invalid) and
        ``valid`` ``(H, W)`` bool, both on ``device``.

    """
    if device is None:
        device = depth.device if isinstance(depth, torch.Tensor) else torch.device('cpu')
    z = as_tensor(depth, torch.device(device), torch.float64)
    if z.ndim != 2:
        raise ValueError(f'depth must be (H, W), got shape {tuple(z.shape)}')
    intrinsics = as_tensor(K, z.device, torch.float64)
    valid = torch.isfinite(z) & (z > near) & (z < far)
    z = torch.where(valid, z, torch.zeros((), dtype=z.dtype, device=z.device))
    height, width = z.shape
    v = torch.arange(height, dtype=torch.float64, device=z.device)[:, None]
    u = torch.arange(width, dtype=torch.float64, device=z.device)[None, :]
    x = (u - intrinsics[0, 2]) / intrinsics[0, 0] * z
    y = (v - intrinsics[1, 2]) / intrinsics[1, 1] * z
    points_camera = torch.stack((x, y, z), dim=-1)
    points_world = transform_points(T_world_camera, points_camera)
    points_world = torch.where(valid[..., None], points_world,
                               torch.zeros((), dtype=points_world.dtype, device=z.device))
    return points_world.to(dtype), valid
