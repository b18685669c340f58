"""Pinhole back-projection and rigid transforms in torch (CPU or CUDA).

Frames follow ``core.types``: the camera frame is OpenCV optical (x right, y down, z
forward) and ``T_world_camera`` maps camera points to the world frame. Distances are metres.
"""

from typing import Dict, Optional, Tuple, Union
import warnings

import numpy as np
import torch

from onlineanyseg_ros.core.cuda_graphs import capture

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
    return _backproject_tensors(z, as_tensor(K, z.device, torch.float64),
                                as_tensor(T_world_camera, z.device, torch.float64), near, far,
                                dtype)


def _backproject_tensors(depth: torch.Tensor, intrinsics: torch.Tensor,
                         T_world_camera: torch.Tensor, near: float, far: float,
                         dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Back-project tensors of one device (``backproject`` without uploads or host syncs).

    ``depth``: ``(H, W)`` metres, any real dtype; ``intrinsics``: float64 ``(3, 3)``;
    ``T_world_camera``: float64 ``(4, 4)``.
    """
    z = depth.to(torch.float64)
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


class Backprojector:
    """``backproject`` for the frames of one device, replayed from a CUDA graph per image.

    A frame's back-projection is about 40 small kernels launched one by one: on an H200
    their launches cost 0.8 ms of host time for 0.2 ms of GPU work, on every frame. On
    CUDA the first frame of an image size (shape and depth dtype) runs eagerly, the second
    captures the kernels in a graph, and later frames replay it. The depth is uploaded in
    its own dtype, the intrinsics and pose in one packed float64 upload; both are copied
    into the graph's static buffers. The outputs are cloned out of the graph's memory: a
    frame's points may still be read (by the lifting stream) when the next frame replays.
    Without graphs, and after a failed capture (warned once), frames go through
    ``backproject``; ``use_graphs`` on the CPU runs the same static buffers eagerly per
    frame. The arithmetic is the same either way.

    Args:
        near: depths ``<= near`` are invalid (metres).
        far: depths ``>= far`` are invalid (metres).
        device: where frames are back-projected.
        use_graphs: capture and replay (default: on CUDA; on the CPU, static buffers only).

    """

    def __init__(self, near: float, far: float, device: Union[str, torch.device],
                 use_graphs: Optional[bool] = None) -> None:
        self.near, self.far = near, far
        self.device = torch.device(device)
        self.use_graphs = self.device.type == 'cuda' if use_graphs is None else use_graphs
        # (H, W, depth dtype) -> None after the eager first frame, then its graph.
        self._graphs: Dict[Tuple[int, int, torch.dtype], Optional['_BackprojectGraph']] = {}
        self.stats = {'replays': 0, 'captures': 0}

    def __call__(self, depth: ArrayLike, K: ArrayLike,
                 T_world_camera: ArrayLike) -> Tuple[torch.Tensor, torch.Tensor]:
        """Float32 ``(H, W, 3)`` world points and bool ``(H, W)`` valid, as ``backproject``."""
        if not self.use_graphs:
            return backproject(depth, K, T_world_camera, self.near, self.far, self.device)
        depth = as_tensor(depth, self.device, _torch_dtype(depth))
        if depth.ndim != 2:
            raise ValueError(f'depth must be (H, W), got shape {tuple(depth.shape)}')
        camera = as_tensor(np.concatenate([np.asarray(_host(K), np.float64).reshape(9),
                                           np.asarray(_host(T_world_camera),
                                                      np.float64).reshape(16)]),
                           self.device, torch.float64)
        key = (*depth.shape, depth.dtype)
        if key not in self._graphs:
            self._graphs[key] = None  # warm-up: lazy initialisation outside any capture
            return _backproject_tensors(depth, camera[:9].view(3, 3), camera[9:].view(4, 4),
                                        self.near, self.far, torch.float32)
        graph = self._graphs[key]
        if graph is None:
            try:
                graph = self._graphs[key] = _BackprojectGraph(self, depth)
            except RuntimeError as error:  # a driver or operator that graphs do not take
                warnings.warn(f'Backprojector: CUDA graph capture failed, back-projecting '
                              f'without graphs: {error}')
                self.use_graphs = False
                return backproject(depth, K, T_world_camera, self.near, self.far,
                                   self.device)
            self.stats['captures'] += 1
        self.stats['replays'] += 1
        return graph.replay(depth, camera)


class _BackprojectGraph:
    """``_backproject_tensors`` of one image size captured in a CUDA graph (CPU: eager)."""

    def __init__(self, backprojector: Backprojector, depth: torch.Tensor) -> None:
        self._near, self._far = backprojector.near, backprojector.far
        self._depth = torch.zeros_like(depth)
        self._camera = torch.zeros(25, dtype=torch.float64, device=depth.device)
        self._graph = self._outputs = None
        if depth.device.type == 'cuda':
            self._graph = torch.cuda.CUDAGraph()
            # Capturing records the kernels without running them.
            with capture(self._graph, depth.device):
                self._outputs = self._launch()

    def _launch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return _backproject_tensors(self._depth, self._camera[:9].view(3, 3),
                                    self._camera[9:].view(4, 4), self._near, self._far,
                                    torch.float32)

    def replay(self, depth: torch.Tensor,
               camera: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Back-project ``depth`` with packed ``camera`` (K row-major, then the pose)."""
        self._depth.copy_(depth, non_blocking=True)
        self._camera.copy_(camera, non_blocking=True)
        if self._graph is None:
            return self._launch()
        self._graph.replay()
        return tuple(output.clone() for output in self._outputs)


def _host(value: ArrayLike) -> np.ndarray:
    """Return a small host array of ``value`` (a device tensor is copied: a sync)."""
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def _torch_dtype(value: ArrayLike) -> torch.dtype:
    """Return the torch dtype of a tensor or of a host array's elements."""
    if isinstance(value, torch.Tensor):
        return value.dtype
    return torch.from_numpy(np.empty(0, dtype=np.asarray(value).dtype)).dtype
