"""Per-voxel surface statistics on the shared voxel hash: the map's point cloud.

The reference extracts its surface cloud from a TSDF (points of voxels seen in >= 3
integrated keyframes). Here each voxel of the shared ``VoxelHash`` accumulates the points
that fell into it; a voxel is a surface point once ``surface_min_observations`` frames hit
it, at the mean position of its points. Both the mask graph and this map index their
per-slot arrays by the same slots.
"""

from dataclasses import dataclass
import itertools
from typing import Dict, Optional, Union

import torch

from onlineanyseg_ros.core.config import SegmenterConfig
from onlineanyseg_ros.core.voxel_hash import pack_keys, unpack_keys, voxel_keys, VoxelHash

_NEIGHBORHOOD = tuple(itertools.product((-1, 0, 1), repeat=3))
_FIELDS = ('point_sum', 'color_sum', 'pixel_count', 'observations', 'view_sum')


@dataclass(frozen=True)
class SurfacePoints:
    """Surface points of the map, one per voxel, on the map's device.

    Attributes:
        slots: int64 ``(S,)`` voxel-hash slot of each point, ascending.
        points: float32 ``(S, 3)`` world-frame mean position of the voxel's samples (m).
        colors: uint8 ``(S, 3)`` mean RGB.
        normals: float32 ``(S, 3)`` unit normals in the world frame, facing the cameras.
        counts: int32 ``(S,)`` samples (pixels) accumulated in the voxel.
        observations: int32 ``(S,)`` integrated frames that hit the voxel.

    """

    slots: torch.Tensor
    points: torch.Tensor
    colors: torch.Tensor
    normals: torch.Tensor
    counts: torch.Tensor
    observations: torch.Tensor

    def __len__(self) -> int:
        """Return the number of surface points."""
        return self.slots.numel()


class SurfaceMap:
    """Accumulate back-projected pixels per voxel and extract oriented surface points."""

    def __init__(self, config: SegmenterConfig, device: Union[str, torch.device],
                 voxel_hash: VoxelHash) -> None:
        """Bind to ``voxel_hash`` (shared with the mask graph) on ``device``."""
        self.config = config
        self.device = torch.device(device)
        if voxel_hash.device != self.device:
            raise ValueError(f'voxel_hash lives on {voxel_hash.device}, map on {self.device}')
        self.voxel_hash = voxel_hash
        self.reset()

    def reset(self) -> None:
        """Clear the statistics (the shared hash is reset by its owner)."""
        self._capacity = 0
        self._arrays: Dict[str, torch.Tensor] = {}
        self._reserve(1024)

    def integrate(self, points_world: torch.Tensor, colors: torch.Tensor,
                  camera_center: torch.Tensor, valid: Optional[torch.Tensor] = None
                  ) -> torch.Tensor:
        """Add one frame's valid pixels.

        Args:
            points_world: float ``(N, 3)`` world points (m); their voxel is
                ``floor(p / voxel_size_m)`` evaluated in float64.
            colors: uint8 ``(N, 3)`` RGB of the same pixels.
            camera_center: float ``(3,)`` optical centre of the frame in the world (m).
            valid: bool ``(N,)`` rows to add, or None (all). Passing the whole image with
                its mask instead of the valid rows avoids compacting them (a host sync on
                CUDA); invalid rows may hold anything.

        Returns:
            int64 ``(N,)`` slot of each point's voxel, -1 for invalid rows.

        """
        if points_world.ndim != 2 or points_world.shape[1] != 3:
            raise ValueError(f'points_world must be (N, 3), got {tuple(points_world.shape)}')
        if colors.shape != points_world.shape or colors.dtype != torch.uint8:
            raise ValueError(f'colors must be uint8 {tuple(points_world.shape)}, got '
                             f'{colors.dtype} {tuple(colors.shape)}')
        if valid is not None and tuple(valid.shape) != (points_world.shape[0],):
            raise ValueError(f'valid must be ({points_world.shape[0]},), got '
                             f'{tuple(valid.shape)}')
        points = points_world.to(device=self.device, dtype=torch.float64)
        if valid is not None:
            valid = valid.to(self.device)
        slots = self.voxel_hash.insert(voxel_keys(points, self.config.voxel_size_m), valid)
        self._reserve(self.voxel_hash.num_slots)
        # Invalid rows accumulate into the spare row past the capacity, which nothing reads.
        rows = slots if valid is None else torch.where(valid, slots, self._capacity)
        arrays = self._arrays
        arrays['point_sum'].index_add_(0, rows, points)
        arrays['color_sum'].index_add_(0, rows, colors.to(device=self.device, dtype=torch.int64))
        arrays['pixel_count'].index_add_(0, rows, torch.ones_like(rows))
        # Gather then scatter: duplicate slots all write the same incremented value, so each
        # voxel counts this frame once without sorting the slots.
        observations = arrays['observations']
        observations[rows] = observations[rows] + 1
        view = camera_center.to(device=self.device, dtype=torch.float64) - points
        view = view / torch.linalg.vector_norm(view, dim=1, keepdim=True).clamp_min(1e-12)
        arrays['view_sum'].index_add_(0, rows, view)
        return slots

    def surface(self, min_observations: Optional[int] = None,
                with_normals: bool = True) -> SurfacePoints:
        """Return the voxels observed in at least ``min_observations`` frames.

        ``min_observations`` defaults to ``config.surface_min_observations``. Without
        ``with_normals`` the normals are left empty ``(0, 3)`` (they cost a neighbourhood
        PCA over the whole surface; only descriptors need them). Normals come
        from a PCA of the voxel's and its 26 neighbours' mean positions (surface voxels
        only; eigenvector of the smallest eigenvalue), flipped to face the summed view
        direction; with fewer than 3 such points the mean view direction is used.
        """
        if min_observations is None:
            min_observations = self.config.surface_min_observations
        num_slots = self.voxel_hash.num_slots
        self._reserve(num_slots)
        arrays = {name: array[:num_slots] for name, array in self._arrays.items()}
        is_surface = (arrays['observations'] >= min_observations) & (arrays['pixel_count'] > 0)
        slots = torch.nonzero(is_surface).squeeze(1)
        count = arrays['pixel_count'][slots]
        means = arrays['point_sum'][slots] / count[:, None]
        colors = torch.round(arrays['color_sum'][slots] / count[:, None]).clamp_(0, 255)
        normals = (self._normals(slots, means, is_surface, arrays) if with_normals
                   else torch.zeros((0, 3), dtype=torch.float32, device=self.device))
        return SurfacePoints(slots=slots, points=means.to(torch.float32),
                             colors=colors.to(torch.uint8), normals=normals,
                             counts=count.to(torch.int32),
                             observations=arrays['observations'][slots].to(torch.int32))

    def _normals(self, slots: torch.Tensor, means: torch.Tensor, is_surface: torch.Tensor,
                 arrays: Dict[str, torch.Tensor]) -> torch.Tensor:
        """PCA normals of float64 ``means`` (S, 3) over 3x3x3 voxel neighbourhoods."""
        position = torch.full_like(is_surface, -1, dtype=torch.int64)
        position[slots] = torch.arange(slots.numel(), device=self.device)
        ijk = unpack_keys(self.voxel_hash.keys[slots])
        weight = torch.zeros(slots.numel(), dtype=torch.float64, device=self.device)
        first = torch.zeros_like(means)
        second = torch.zeros((slots.numel(), 3, 3), dtype=torch.float64, device=self.device)
        for offset in _NEIGHBORHOOD:
            shifted = ijk + torch.tensor(offset, dtype=torch.int64, device=self.device)
            neighbor = self.voxel_hash.lookup(pack_keys(shifted))
            index = position[neighbor.clamp_min(0)]
            present = (neighbor >= 0) & (index >= 0)
            # Coordinates relative to the centre voxel keep the moments well conditioned.
            relative = (means[index.clamp_min(0)] - means) * present[:, None]
            weight += present
            first += relative
            second += relative[:, :, None] * relative[:, None, :]
        centroid = first / weight[:, None]
        covariance = second / weight[:, None, None] - centroid[:, :, None] * centroid[:, None, :]
        view = arrays['view_sum'][slots]
        view = view / torch.linalg.vector_norm(view, dim=1, keepdim=True).clamp_min(1e-12)
        normals = _smallest_eigenvectors(covariance, view)
        normals = torch.where(weight[:, None] >= 3, normals, view)
        flip = (normals * view).sum(1, keepdim=True) < 0
        return torch.where(flip, -normals, normals).to(torch.float32)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Return the per-slot statistics (CPU tensors of length ``voxel_hash.num_slots``)."""
        num_slots = self.voxel_hash.num_slots
        self._reserve(num_slots)
        return {name: self._arrays[name][:num_slots].cpu().clone() for name in _FIELDS}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore ``state_dict`` output; load the shared hash first (lengths must match)."""
        num_slots = self.voxel_hash.num_slots
        if set(state) != set(_FIELDS):
            raise ValueError(f'SurfaceMap state needs exactly {list(_FIELDS)}')
        for name in _FIELDS:
            if state[name].shape[0] != num_slots:
                raise ValueError(f'SurfaceMap state {name} has {state[name].shape[0]} rows, '
                                 f'the voxel hash {num_slots} slots')
        self.reset()
        self._reserve(num_slots)
        for name in _FIELDS:
            self._arrays[name][:num_slots] = state[name].to(self.device)

    def _reserve(self, num_slots: int) -> None:
        """Grow every per-slot array (by doubling) to hold ``num_slots`` slots.

        Each array has one spare row past the capacity, the sink of invalid rows.
        """
        if num_slots <= self._capacity:
            return
        capacity = max(1024, 1 << (num_slots - 1).bit_length())
        shapes = {'point_sum': (3, torch.float64), 'color_sum': (3, torch.int64),
                  'pixel_count': (None, torch.int64), 'observations': (None, torch.int32),
                  'view_sum': (3, torch.float64)}
        for name, (width, dtype) in shapes.items():
            shape = (capacity + 1,) if width is None else (capacity + 1, width)
            grown = torch.zeros(shape, dtype=dtype, device=self.device)
            if name in self._arrays:
                grown[:self._capacity] = self._arrays[name][:self._capacity]
            self._arrays[name] = grown
        self._capacity = capacity


# Power iterations of the normal estimate; planar neighbourhoods converge in a few.
_NORMAL_ITERATIONS = 32


def _smallest_eigenvectors(covariance: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """Return the unit eigenvector of the smallest eigenvalue of each ``(N, 3, 3)`` matrix.

    Power iteration on ``trace(C) I - C`` (positive semi-definite, same eigenvectors, order
    reversed) from ``initial`` (N, 3), e.g. the view direction. Used instead of
    ``torch.linalg.eigh`` because cuSOLVER's batched solver fails on large batches of
    small matrices, and a fixed number of elementwise steps needs no solver at all.
    """
    trace = covariance.diagonal(dim1=1, dim2=2).sum(1)
    shifted = torch.diag_embed(trace[:, None].expand(-1, 3)) - covariance
    vector = initial.to(covariance.dtype)
    for _ in range(_NORMAL_ITERATIONS):
        vector = torch.bmm(shifted, vector[:, :, None])[:, :, 0]
        vector = vector / torch.linalg.vector_norm(vector, dim=1, keepdim=True).clamp_min(1e-30)
    return vector
