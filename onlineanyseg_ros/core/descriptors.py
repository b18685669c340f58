"""Per-point geometric descriptors for the stage-1 geometric term (method.md 5).

The default is weight-free: FPFH (Rusu et al. 2009, the PCL formulation, 3 x 11 bins) on the
device, from surface points with normals and a radius neighbourhood found with a uniform
grid in torch. The learned FCGF descriptor of the reference is kept behind a lazy import
(MinkowskiEngine, the FCGF repository and its checkpoint must be installed by the user).
The mask graph pools these per-point features into one descriptor per merged mask.
"""

import math
import os
from typing import Iterator, Optional, Protocol, Tuple

import torch

from onlineanyseg_ros.core.config import SegmenterConfig

_GRID_BIAS = 1 << 20  # cell coordinates are packed with 21 bits per axis
_CELL_OFFSETS = torch.stack(torch.meshgrid(*(torch.arange(-1, 2),) * 3, indexing='ij'),
                            dim=-1).reshape(-1, 3)


class PointDescriptor(Protocol):
    """Computes one feature vector per surface point."""

    dim: int

    def point_features(self, points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """Return float32 ``(P, dim)`` features of ``points`` ``(P, 3)`` with unit normals."""
        ...


def _pack_cells(cells: torch.Tensor) -> torch.Tensor:
    """Pack int64 ``(n, 3)`` grid cells into int64 ``(n,)`` keys (21 bits per axis)."""
    biased = cells + _GRID_BIAS
    return (biased[:, 0] << 42) | (biased[:, 1] << 21) | biased[:, 2]


def radius_pairs(points: torch.Tensor, radius: float,
                 chunk_points: int = 4096) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield all ordered pairs ``(i, j)``, ``i != j``, with ``|p_i - p_j| < radius``.

    A uniform grid of cell size ``radius`` (sorted packed cell keys, 27 neighbour cells
    looked up with ``searchsorted``) gives the candidates. Pairs come in chunks of
    ``chunk_points`` source points, as int64 ``(E,)`` tensors on the points' device.
    """
    device = points.device
    # Cells slightly larger than the radius keep every in-radius pair within the 27 cells
    # even when the float division rounds a point across a cell border.
    cells = torch.floor(points / (radius * 1.0001)).to(torch.int64)
    keys = _pack_cells(cells)
    sorted_keys, order = torch.sort(keys)
    offsets = _CELL_OFFSETS.to(device)
    for start in range(0, points.shape[0], chunk_points):
        source = torch.arange(start, min(start + chunk_points, points.shape[0]), device=device)
        neighbour_keys = _pack_cells((cells[source][:, None, :] + offsets).reshape(-1, 3))
        low = torch.searchsorted(sorted_keys, neighbour_keys)
        counts = torch.searchsorted(sorted_keys, neighbour_keys, right=True) - low
        total = int(counts.sum())  # sync: size of the candidate list
        owner = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts,
                                        output_size=total)
        first = torch.cumsum(counts, 0) - counts
        target = order[low[owner] + torch.arange(total, device=device) - first[owner]]
        src = source[owner // offsets.shape[0]]
        close = ((points[target] - points[src]).square().sum(1) < radius * radius)
        keep = close & (src != target)
        yield src[keep], target[keep]


def pair_features(points: torch.Tensor, normals: torch.Tensor, src: torch.Tensor,
                  dst: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the PCL pair features ``(theta, alpha, phi)`` of pairs ``(src, dst)``.

    Darboux frame at the point whose normal is closer to the connecting line (PCL's
    ``computePairFeatures``): ``theta`` in ``[-pi, pi]``, ``alpha`` and ``phi`` in
    ``[-1, 1]``; all are invariant to rotations and translations. Float32 ``(E,)`` each.
    """
    delta = points[dst] - points[src]
    distance = delta.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n1, n2 = normals[src], normals[dst]
    angle1 = (n1 * delta).sum(1) / distance[:, 0]
    angle2 = (n2 * delta).sum(1) / distance[:, 0]
    swap = (angle1.abs() < angle2.abs())[:, None]
    n1, n2 = torch.where(swap, n2, n1), torch.where(swap, n1, n2)
    delta = torch.where(swap, -delta, delta)
    phi = torch.where(swap[:, 0], -angle2, angle1)
    v = torch.nn.functional.normalize(torch.linalg.cross(delta, n1), dim=1, eps=1e-12)
    w = torch.linalg.cross(n1, v)
    alpha = (v * n2).sum(1)
    theta = torch.atan2((w * n2).sum(1), (n1 * n2).sum(1))
    return theta, alpha, phi


class FpfhDescriptor:
    """Fast Point Feature Histograms (33-d, L2-normalised per point), torch on any device."""

    def __init__(self, radius_m: float = 0.075, bins: int = 11, chunk_points: int = 4096):
        """Use neighbours within ``radius_m`` metres and ``bins`` bins per angle."""
        if radius_m <= 0.0 or bins < 1 or chunk_points < 1:
            raise ValueError('FpfhDescriptor needs radius_m > 0, bins >= 1, chunk_points >= 1')
        self.radius_m = radius_m
        self.bins = bins
        self.chunk_points = chunk_points
        self.dim = 3 * bins

    def point_features(self, points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """Return float32 ``(P, 33)`` FPFH features of world-frame ``points`` ``(P, 3)`` (m).

        ``normals`` ``(P, 3)`` must be unit length and consistently oriented (e.g. TSDF
        gradients). A point without neighbours gets a zero row.
        """
        points = points.to(torch.float32)
        normals = normals.to(torch.float32)
        # Both passes use the same pairs: keep them (about 30 per surface point).
        pairs = list(radius_pairs(points, self.radius_m, self.chunk_points))
        spfh = self._accumulate(points, normals, pairs, None)
        neighbour = self._accumulate(points, normals, pairs, spfh)
        return torch.nn.functional.normalize(spfh + neighbour, dim=1, eps=1e-12)

    def _accumulate(self, points, normals, pairs, spfh: Optional[torch.Tensor]) -> torch.Tensor:
        """Histogram pair features (spfh None) or sum 1/d-weighted neighbour SPFH rows.

        Each of the three sub-histograms is normalised to sum 1 per point.
        """
        bins = self.bins
        total = torch.zeros((points.shape[0], 3 * bins), device=points.device)
        for src, dst in pairs:
            if spfh is None:
                theta, alpha, phi = pair_features(points, normals, src, dst)
                scaled = torch.stack([(theta + math.pi) / (2 * math.pi), (alpha + 1) / 2,
                                      (phi + 1) / 2], dim=1)
                index = (scaled * bins).to(torch.int64).clamp(0, bins - 1)
                index = index + torch.arange(3, device=points.device) * bins
                total.index_put_((src[:, None].expand(-1, 3), index),
                                 torch.ones(index.shape, device=points.device),
                                 accumulate=True)
            else:
                weight = 1.0 / (points[dst] - points[src]).norm(dim=1).clamp_min(1e-6)
                total.index_add_(0, src, spfh[dst] * weight[:, None])
        per_angle = total.view(-1, 3, bins)
        return (per_angle / per_angle.sum(2, keepdim=True).clamp_min(1e-12)).flatten(1)


class FcgfDescriptor:
    """FCGF ResUNetBN2C features (16-d, the reference's descriptor); needs extra installs.

    Requires MinkowskiEngine, the FCGF repository (github.com/chrischoy/FCGF) importable as
    ``model.resunet`` and the 3DMatch checkpoint ``ResUNetBN2C-16feat-3conv.pth``.
    """

    def __init__(self, weights_path: Optional[str], voxel_size_m: float = 0.025,
                 device='cpu') -> None:
        """Load the network lazily; raise ImportError/FileNotFoundError naming what is missing."""
        try:
            import MinkowskiEngine
            from model.resunet import ResUNetBN2C
        except ImportError as error:
            raise ImportError(
                "descriptor 'fcgf' needs MinkowskiEngine and the FCGF repository "
                '(github.com/chrischoy/FCGF, its root on PYTHONPATH); install them or use '
                "descriptor 'fpfh'") from error
        if weights_path is None or not os.path.isfile(weights_path):
            raise FileNotFoundError(
                "descriptor 'fcgf' needs the FCGF checkpoint ResUNetBN2C-16feat-3conv.pth, "
                f'got {weights_path!r}')
        model = ResUNetBN2C(1, 16, normalize_feature=True, conv1_kernel_size=3, D=3)
        model.load_state_dict(torch.load(weights_path, map_location='cpu')['state_dict'])
        self._engine = MinkowskiEngine
        self._model = model.to(device).eval()
        self._device = torch.device(device)
        self.voxel_size_m = voxel_size_m
        self.dim = 16

    @torch.no_grad()
    def point_features(self, points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """Return float32 ``(P, 16)`` features; geometry only, ``normals`` are unused."""
        voxels = torch.floor(points / self.voxel_size_m).to(torch.int32)
        unique, inverse = torch.unique(voxels, dim=0, return_inverse=True)
        coordinates = self._engine.utils.batched_coordinates([unique.cpu()])
        sparse = self._engine.SparseTensor(
            torch.ones((unique.shape[0], 1)), coordinates=coordinates, device=self._device)
        features = self._model(sparse).features_at_coordinates(
            coordinates.to(self._device, torch.float32))
        return features[inverse.to(self._device)].to(points.device)


def make_descriptor(config: SegmenterConfig, device='cpu') -> Optional[PointDescriptor]:
    """Build the descriptor named by ``config.descriptor``; None for 'none'."""
    if config.descriptor == 'none':
        return None
    if config.descriptor == 'fcgf':
        return FcgfDescriptor(config.fcgf_weights_path or None, config.voxel_size_m, device)
    return FpfhDescriptor(radius_m=config.descriptor_radius_m)
