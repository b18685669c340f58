"""Lift one frame's 2D masks to voxel-key sets, all masks at once (method.md 3.3 and 3.4).

Pipeline per mask, vectorised over masks with int64 (mask, item) codes: valid pixels ->
voxel downsample -> DBSCAN, keep the largest label -> statistical outlier removal -> voxel
association within ``query_radius_m`` -> coverage / size filters -> boundary removal
between the masks of the frame. Geometry runs in float64 whatever the input dtype (Open3D,
which the reference uses for denoising, works in double; only the approximate kNN table of
the outlier filter is float32), so float32 and float64 inputs of the same values give
identical results. Neighbourhoods come from lattice-window lookups (``_denoise``).
"""

from dataclasses import dataclass, field
import functools
import math
from typing import Dict, Optional, Tuple

import torch

from onlineanyseg_ros.core.config import SegmenterConfig
from onlineanyseg_ros.core.graph_ops import (connected_components, count_values,
                                             knn_initial_radius, knn_mean_distance,
                                             lattice_neighbors, lattice_offsets, radius_pairs,
                                             segment_mode)
from onlineanyseg_ros.core.voxel_hash import pack_keys

DROP_REASONS = ('few_pixels', 'few_points', 'low_coverage', 'few_voxels', 'boundary')


@dataclass(frozen=True)
class LiftedFrame:
    """The voxel sets of one frame's accepted masks, packed.

    Attributes:
        labels: int64 ``(k,)`` original label ids of the accepted masks, ascending.
        observed_keys: int64 ``(n,)`` sorted unique voxel keys of the pre-boundary sets of
            every lifted mask (including masks later dropped by boundary removal).
        mask_keys: int64 ``(sum,)`` post-boundary voxel keys of the accepted masks,
            concatenated in ``labels`` order, sorted within each mask.
        mask_offsets: int64 ``(k + 1,)``; mask ``m`` owns ``mask_keys[off[m]:off[m + 1]]``.
        dropped: number of masks dropped per reason (``DROP_REASONS``).

    All tensors live on the device of the input points.
    """

    labels: torch.Tensor
    observed_keys: torch.Tensor
    mask_keys: torch.Tensor
    mask_offsets: torch.Tensor
    dropped: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))

    @property
    def num_masks(self) -> int:
        """Number of accepted masks."""
        return self.labels.numel()

    @property
    def mask_index(self) -> torch.Tensor:
        """Int64 ``(sum,)`` index into ``labels`` of every entry of ``mask_keys``."""
        sizes = self.mask_offsets[1:] - self.mask_offsets[:-1]
        return torch.repeat_interleave(torch.arange(self.num_masks, device=sizes.device),
                                       sizes, output_size=self.mask_keys.numel())

    @staticmethod
    def empty(device: torch.device, dropped: Optional[Dict[str, int]] = None) -> 'LiftedFrame':
        """Return a frame without masks."""
        none = torch.empty(0, dtype=torch.int64, device=device)
        return LiftedFrame(none, none.clone(), none.clone(),
                           torch.zeros(1, dtype=torch.int64, device=device),
                           dict(dropped or dict.fromkeys(DROP_REASONS, 0)))


_DENSE_LABEL_LIMIT = 1 << 24


def _pixel_masks(labels: torch.Tensor, device: torch.device
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return the mask ids ascending and each pixel's index into them (``len(ids)``: none).

    Args:
        labels: int ``(H, W)`` mask ids, 0 (or negative) = none.
        device: where the results go.

    Returns:
        int64 ``(M,)`` ids and int64 ``(H * W,)`` mask index of every pixel in ``[0, M]``.

    """
    flat_labels = labels.reshape(-1).to(device=device, dtype=torch.int64)
    largest = int(flat_labels.max()) if flat_labels.numel() > 0 else 0
    if largest <= _DENSE_LABEL_LIMIT:
        # Label images hold small ids (mono16): a dense lookup table avoids a sort.
        label_value = flat_labels.clamp(min=0)
        present = torch.zeros(max(largest, 0) + 1, dtype=torch.bool, device=device)
        present.index_fill_(0, label_value, True)
        present[0] = False
        mask_ids = torch.nonzero(present).squeeze(1)
        index_of_label = torch.cumsum(present, 0) - 1
        index_of_label[0] = mask_ids.numel()
        return mask_ids, index_of_label[label_value]
    labelled = flat_labels >= 1
    mask_ids = torch.unique(flat_labels[labelled])
    return mask_ids, torch.where(labelled, torch.searchsorted(mask_ids, flat_labels),
                                 mask_ids.numel())


def voxel_downsample(points: torch.Tensor, point_mask: torch.Tensor, num_masks: int,
                     voxel_size: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Average each mask's points per voxel cell, as Open3D ``voxel_down_sample`` does.

    The grid of a mask is anchored at its own bounding-box minimum minus half a voxel
    (Open3D's convention), not at the world lattice.

    Args:
        points: float64 ``(N, 3)`` world points (m).
        point_mask: int64 ``(N,)`` mask index in ``[0, num_masks)``.
        num_masks: number of masks.
        voxel_size: cell edge (m).

    Returns:
        float64 ``(C, 3)`` cell means, int64 ``(C,)`` mask index of each cell and int64
        ``(C, 3)`` integer cell coordinates in the grid of its mask, ordered by mask. A
        mean lies in its (closed) cell: cell means of one mask are one per cell.

    """
    index = point_mask[:, None].expand(-1, 3)
    lower = torch.full((num_masks, 3), math.inf, dtype=points.dtype, device=points.device)
    lower.scatter_reduce_(0, index, points, reduce='amin')
    anchor = lower - 0.5 * voxel_size
    cells = torch.floor((points - anchor[point_mask]) / voxel_size).to(torch.int64)
    extent = [int(value) + 1 for value in cells.max(0).values.tolist()]
    codes = ((point_mask * extent[0] + cells[:, 0]) * extent[1] + cells[:, 1]) * extent[2] \
        + cells[:, 2]
    cell_codes, cell_of_point, counts = torch.unique(codes, return_inverse=True,
                                                     return_counts=True)
    sums = torch.zeros((cell_codes.numel(), 3), dtype=points.dtype, device=points.device)
    sums.index_add_(0, cell_of_point, points)
    z = cell_codes % extent[2]
    rest = torch.div(cell_codes, extent[2], rounding_mode='floor')
    y = rest % extent[1]
    rest = torch.div(rest, extent[1], rounding_mode='floor')
    cell_ijk = torch.stack((rest % extent[0], y, z), dim=1)
    cell_mask = torch.div(rest, extent[0], rounding_mode='floor')
    return sums / counts[:, None].to(points.dtype), cell_mask, cell_ijk


def dbscan_largest_label(batch: torch.Tensor, num_batches: int, i: torch.Tensor,
                         j: torch.Tensor, min_points: int) -> torch.Tensor:
    """Per batch, keep the points of the DBSCAN label with the most points.

    DBSCAN as in Open3D ``cluster_dbscan``: the neighbourhood includes the point itself;
    core points have >= ``min_points`` neighbours; clusters are the connected components
    of core points; a border point joins the earliest-created cluster among its core
    neighbours (clusters are created in order of their lowest point index); the rest is
    noise. As in the reference, noise counts as a label, and ties go to the label that
    ``argmax(bincount(labels + 1))`` picks first (noise, then creation order).

    Args:
        batch: int64 ``(C,)`` batch (mask) index of each point in ``[0, num_batches)``.
        num_batches: number of batches.
        i, j: int64 ``(E,)`` all ordered pairs ``i != j`` of one batch within eps
            (``graph_ops.radius_pairs``).
        min_points: core-point threshold, counting the point itself.

    Returns:
        bool ``(C,)`` points that belong to their batch's largest label.

    """
    num_points = batch.numel()
    core = count_values(i, num_points) + 1 >= min_points
    core_i, core_j = core.index_select(0, i), core.index_select(0, j)
    # Each pair comes in both orders: one order is enough for the components. The other
    # pairs become self-loops, which join nothing: no compaction (a host sync) here.
    core_edge = core_i & core_j & (i < j)
    component = connected_components(num_points, i, torch.where(core_edge, j, i))
    # Component ids are the lowest core index of each cluster: the creation order of Open3D.
    label = torch.where(core, component, num_points)
    # Pairs that are not (border, core) offer num_points, which changes no label.
    border_edge = ~core_i & core_j
    label.scatter_reduce_(0, i, torch.where(border_edge, component.index_select(0, j),
                                            num_points), reduce='amin')
    shifted = torch.where(label == num_points, torch.zeros_like(label), label + 1)
    mode, _ = segment_mode(batch, shifted, num_batches, num_points + 1)
    return shifted == mode[batch]


def statistical_inliers(points: torch.Tensor, batch: torch.Tensor, num_batches: int,
                        neighbors: int, std_ratio: float, initial_radius: float,
                        candidates: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Open3D ``remove_statistical_outlier`` for every batch at once.

    ``d_i`` = mean distance to the ``neighbors`` nearest points of the batch (the point
    itself included at distance 0; exact kNN, or taken among ``candidates`` as
    ``graph_ops.knn_mean_distance`` says); per batch ``mean = sum(d_i > 0) / n`` and
    ``std = sqrt(sum over d_i > 0 of (d_i - mean)^2 / (n - 1))``; a point is kept when
    ``0 < d_i < mean + std_ratio * std`` (strict, as Open3D; a batch of one point keeps
    nothing). ``neighbors == 0`` disables the filter.

    Args:
        points: float ``(C, 3)``.
        batch: int64 ``(C,)`` in ``[0, num_batches)``.
        num_batches: number of batches.
        neighbors: k of the kNN.
        std_ratio: threshold in standard deviations.
        initial_radius: first kNN search radius (``graph_ops.knn_mean_distance``).
        candidates: optional ``(C, W)`` ascending candidate neighbour distances (inf =
            none) for ``graph_ops.knn_mean_distance``.

    Returns:
        bool ``(C,)`` inliers.

    """
    if neighbors == 0:
        return torch.ones(points.shape[0], dtype=torch.bool, device=points.device)
    mean_distance = knn_mean_distance(points, batch, neighbors, initial_radius, candidates)
    positive = mean_distance > 0
    zero = torch.zeros_like(mean_distance)
    counts = count_values(batch, num_batches).to(points.dtype)
    sums = torch.zeros(num_batches, dtype=points.dtype, device=points.device)
    sums.index_add_(0, batch, torch.where(positive, mean_distance, zero))
    cloud_mean = sums / counts
    squares = torch.zeros_like(sums).index_add_(
        0, batch, torch.where(positive, (mean_distance - cloud_mean[batch]) ** 2, zero))
    threshold = cloud_mean + std_ratio * torch.sqrt(squares / (counts - 1))
    return positive & (mean_distance < threshold[batch])


def associate_voxels(points: torch.Tensor, batch: torch.Tensor, num_batches: int,
                     voxel_size: float, radius: float
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Find, per batch, every lattice point within ``radius`` of one of its points.

    Lattice points are voxel lower corners ``ijk * voxel_size``. Along each axis the
    lattice coordinates within ``r`` of ``p`` lie in ``[(p - r) / vs, (p + r) / vs]``: at
    most ``n = floor(2 r / vs) + 1`` integers from ``ceil((p - r) / vs)`` on, so each point
    tests ``n^3`` candidates (27 for r = 1.2 vs) as squared distances ``<= r^2``. Up to
    float rounding of that start (a lattice point at exactly ``r`` along one axis), this is
    every lattice point within ``r``.

    Args:
        points: float ``(P, 3)`` (m).
        batch: int64 ``(P,)`` in ``[0, num_batches)``.
        num_batches: number of batches.
        voxel_size: lattice spacing (m).
        radius: association radius (m).

    Returns:
        ``pair_batch`` int64 ``(V,)`` and ``pair_key`` int64 ``(V,)``: the unique (batch,
        voxel key) pairs sorted by batch then key; ``coverage`` float64 ``(num_batches,)``
        share of each batch's points with at least one lattice point in range (NaN for a
        batch without points).

    """
    device = points.device
    per_axis, start, hit = lattice_hits(points, voxel_size, radius)
    covered = torch.zeros(num_batches, dtype=torch.float64, device=device)
    covered.index_add_(0, batch, hit.any(1).to(torch.float64))
    coverage = covered / count_values(batch, num_batches).to(torch.float64)
    flat = torch.nonzero(hit.reshape(-1)).squeeze(1)
    if flat.numel() == 0:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty.clone(), coverage
    point = torch.div(flat, per_axis ** 3, rounding_mode='floor')
    step = torch.stack((torch.div(flat, per_axis * per_axis, rounding_mode='floor') % per_axis,
                        torch.div(flat, per_axis, rounding_mode='floor') % per_axis,
                        flat % per_axis), dim=1)
    ijk = start.index_select(0, point) + step
    # The origin stays on the device; only the extents are read back (one sync).
    origin = ijk.min(0).values
    extent = (ijk.max(0).values - origin + 1).tolist()
    local = ijk - origin
    codes = torch.unique(((batch.index_select(0, point) * extent[0] + local[:, 0]) * extent[1]
                          + local[:, 1]) * extent[2] + local[:, 2])
    z = codes % extent[2]
    y = torch.div(codes, extent[2], rounding_mode='floor') % extent[1]
    rest = torch.div(codes, extent[1] * extent[2], rounding_mode='floor')
    x = rest % extent[0]
    unique_ijk = torch.stack((x, y, z), dim=1) + origin
    pair_batch = torch.div(rest, extent[0], rounding_mode='floor')
    return pair_batch, pack_keys(unique_ijk), coverage


def lattice_hits(points: torch.Tensor, voxel_size: float, radius: float
                 ) -> Tuple[int, torch.Tensor, torch.Tensor]:
    """Test each point's candidate lattice points (``associate_voxels``).

    Returns ``n`` (candidates per axis), int64 ``(P, 3)`` lattice coordinates of the first
    candidate per axis and bool ``(P, n^3)``: candidate ``(a, b, c)`` (row-major) is within
    ``radius`` of the point.
    """
    per_axis = math.floor(2.0 * radius / voxel_size) + 1
    start = torch.ceil((points - radius) / voxel_size).to(torch.int64)
    lattice = start[:, :, None] + torch.arange(per_axis, device=points.device)
    squared = (lattice.to(points.dtype) * voxel_size - points[:, :, None]).square_()
    hit = ((squared[:, 0, :, None, None] + squared[:, 1, None, :, None]
            + squared[:, 2, None, None, :]) <= radius * radius).reshape(-1, per_axis ** 3)
    return per_axis, start, hit


def lift_masks(points_world: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor,
               config: SegmenterConfig) -> LiftedFrame:
    """Turn one frame's label image into the voxel-key sets of its accepted masks.

    Steps (method.md 3.3, 3.4): (a) masks with fewer than ``min_mask_pixels`` valid pixels
    are dropped; (b) per-mask voxel downsample (``voxel_downsample``); (c) DBSCAN with
    ``eps = query_radius_m``, ``min_points = denoise_min_neighbors``, largest label kept
    (``dbscan_largest_label``); (d) statistical outlier removal (``statistical_inliers``);
    (e) masks with fewer than ``min_mask_points`` cells are dropped; (f) every lattice point
    within ``query_radius_m`` of a remaining cell is associated (``associate_voxels``);
    masks need ``coverage >= coverage_min`` and ``>= min_mask_points`` voxels ("lifted");
    (g) voxels shared by two or more lifted masks are removed from all of them, and a mask
    is accepted with more than ``min_voxels_after_boundary`` voxels left.

    Deviation: the reference only associates voxels allocated in this frame's TSDF frustum
    blocks. Every lattice point within 3 cm of an observed point lies well inside those
    blocks (they extend +-8 voxels around the observed surface), so the condition is dropped
    and coverage is 1 whenever ``query_radius_m >= voxel_size_m * sqrt(3) / 2``.

    Args:
        points_world: float ``(H, W, 3)`` world points (m) from ``geometry.backproject``.
        valid: bool ``(H, W)`` pixels with usable depth.
        labels: int ``(H, W)`` mask ids, 0 = none, k >= 1 = mask k.
        config: thresholds (fields named above).

    Returns:
        ``LiftedFrame`` on the device of ``points_world``. Host syncs: tensor sizes of the
        data-dependent steps and one read of the drop counts.

    """
    device = points_world.device
    mask_ids, mask_of_pixel = _pixel_masks(labels, device)
    num_masks = mask_ids.numel()
    # Pixels without depth join the "no mask" index num_masks, which is never alive.
    mask_or_none = torch.where(valid.reshape(-1), mask_of_pixel, num_masks)
    alive = count_values(mask_or_none, num_masks + 1)[:num_masks] >= config.min_mask_pixels
    alive_after = [alive]
    alive_or_none = torch.cat((alive, alive.new_zeros(1)))
    kept_pixels = torch.nonzero(alive_or_none.index_select(0, mask_or_none)).squeeze(1)
    if kept_pixels.numel() == 0:
        return LiftedFrame.empty(device, _dropped(num_masks, alive_after))
    points = points_world.reshape(-1, 3).index_select(0, kept_pixels).to(torch.float64)
    cells, cell_mask, cell_ijk = voxel_downsample(
        points, mask_or_none.index_select(0, kept_pixels), num_masks, config.voxel_size_m)
    cells, cell_mask = _denoise(cells, cell_mask, cell_ijk, num_masks, config)
    alive = alive & (count_values(cell_mask, num_masks) >= config.min_mask_points)
    alive_after.append(alive)
    cells, cell_mask = _compress(alive.index_select(0, cell_mask), cells, cell_mask)
    pair_mask, pair_key, coverage = associate_voxels(
        cells, cell_mask, num_masks, config.voxel_size_m, config.query_radius_m)
    alive = alive & (coverage >= config.coverage_min)
    alive_after.append(alive)
    alive = alive & (count_values(pair_mask, num_masks) >= config.min_mask_points)
    alive_after.append(alive)
    observed_keys, pair_mask, pair_key, interior, sizes = _remove_boundary(
        pair_mask, pair_key, alive, num_masks)
    alive = alive & (sizes > config.min_voxels_after_boundary)
    alive_after.append(alive)
    (mask_keys,) = _compress(interior & alive.index_select(0, pair_mask), pair_key)
    accepted_ids, accepted_sizes = _compress(alive, mask_ids, sizes)
    offsets = torch.cat((accepted_sizes.new_zeros(1), torch.cumsum(accepted_sizes, 0)))
    return LiftedFrame(labels=accepted_ids, observed_keys=observed_keys, mask_keys=mask_keys,
                       mask_offsets=offsets, dropped=_dropped(num_masks, alive_after))


def _compress(keep: torch.Tensor, *tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Return the rows of every tensor where bool ``(N,)`` ``keep`` is set.

    One ``nonzero`` (a host sync on CUDA) serves all tensors, where indexing each with the
    bool mask would sync once per tensor.
    """
    rows = torch.nonzero(keep).squeeze(1)
    return tuple(tensor.index_select(0, rows) for tensor in tensors)


def _denoise(cells: torch.Tensor, cell_mask: torch.Tensor, cell_ijk: torch.Tensor,
             num_masks: int, config: SegmenterConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run DBSCAN and the outlier filter on the cells, neighbours from one window lookup.

    Each cell looks up the cells of its mask in a window of its grid: the offsets of
    ``[-2, 2]^3`` whose gap (``graph_ops.lattice_offsets``) is at most
    ``max(1, eps / voxel_size_m)`` cells (81 offsets for eps = 1.2 voxels). Cell means lie
    in their cells, so every pair of cells within eps is in the window when
    ``eps < 2 * voxel_size_m``, and DBSCAN (``eps = query_radius_m``) is exact; a larger
    eps falls back to ``graph_ops.radius_pairs``.

    Approximation: the outlier filter's kNN is taken among the kept cells of the window.
    The window holds every cell closer than ``sqrt(2) * voxel_size_m`` (3.5 cm), so ``d_i``
    is exact when the k-th nearest cell is closer than that, and otherwise may miss a
    nearer cell two cells away along two axes or three along one, overestimating ``d_i``.
    On the synthetic room (2.5 cm cells, k = 20) 95-98 % of the cells get the exact
    ``d_i`` and >= 99.8 % the same inlier decision. A cell with fewer than
    ``min(k, mask size)`` kept window cells gets the exact kNN (radius search).
    """
    eps, voxel_size = config.query_radius_m, config.voxel_size_m
    neighbor, squared = _forward_window(cells, cell_mask, cell_ijk, num_masks,
                                        _forward_offsets(max(1.0, eps / voxel_size), cells.device))
    if eps < 2.0 * voxel_size * (1.0 - 1e-9):
        cell, column = torch.nonzero(squared <= eps * eps).unbind(1)
        other = neighbor[cell, column]
        i, j = torch.cat((cell, other)), torch.cat((other, cell))
    else:
        i, j = radius_pairs(cells, cell_mask, eps)
    keep = dbscan_largest_label(cell_mask, num_masks, i, j, config.denoise_min_neighbors)
    kept = torch.nonzero(keep).squeeze(1)
    candidates = (_window_candidates(neighbor, squared, keep, kept, config.outlier_neighbors)
                  if config.outlier_neighbors > 0 else None)
    cells, cell_mask = cells.index_select(0, kept), cell_mask.index_select(0, kept)
    # Cells left to the exact kNN found fewer than k cells in their window: they lie on the
    # border of their mask, where the k nearest fill a half or quarter disc, not a disc. A
    # start at twice the interior radius skips a search round that ~90 % of them fail (on
    # the synthetic room); any start gives the same, exact kNN.
    knn_radius = 2.0 * knn_initial_radius(voxel_size, config.outlier_neighbors)
    inliers = statistical_inliers(cells, cell_mask, num_masks, config.outlier_neighbors,
                                  config.outlier_std_ratio, knn_radius, candidates)
    return _compress(inliers, cells, cell_mask)


_SCRATCH_ROWS = 256


@functools.lru_cache(maxsize=8)
def _forward_offsets(max_gap: float, device: torch.device) -> torch.Tensor:
    """Return the forward half (after the zero offset) of ``lattice_offsets(2, max_gap)``.

    A constant per configuration and device, built once instead of ~10 small ops and a
    host sync per frame. Callers must not modify it.
    """
    offsets = lattice_offsets(2, max_gap, device)
    return offsets[offsets.shape[0] // 2 + 1:]


def _forward_window(cells: torch.Tensor, cell_mask: torch.Tensor, cell_ijk: torch.Tensor,
                    num_masks: int, forward: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Look up the cells at the ``forward`` offsets (each unordered pair once).

    Returns int64 ``(C, H)`` neighbour rows (``C`` where none) and float64 ``(C, H)``
    squared distances between the cell means (inf where none).
    """
    neighbor = lattice_neighbors(cell_ijk, cell_mask, num_masks, forward).to(torch.int64)
    return neighbor, window_squared(cells, neighbor)


def window_squared(cells: torch.Tensor, neighbor: torch.Tensor) -> torch.Tensor:
    """Float ``(C, H)`` squared distances from each cell mean to its neighbours' means.

    ``cells`` float ``(C, 3)``; ``neighbor`` int64 ``(C, H)`` rows, ``C`` = none (inf).
    """
    flat = neighbor.reshape(-1)
    squared = torch.zeros(neighbor.shape, dtype=cells.dtype, device=cells.device)
    padding = torch.full((1,), math.inf, dtype=cells.dtype, device=cells.device)
    for axis in cells.unbind(1):
        padded = torch.cat((axis, padding))
        difference = padded.index_select(0, flat).reshape(neighbor.shape) - axis[:, None]
        squared.addcmul_(difference, difference)
    return squared


def _window_candidates(neighbor: torch.Tensor, squared: torch.Tensor, keep: torch.Tensor,
                       kept: Optional[torch.Tensor], k: int) -> torch.Tensor:
    """Return each kept cell's ``k`` smallest distances to the kept cells of its window.

    ``keep`` bool ``(C,)`` marks the kept cells and ``kept`` int64 holds their rows
    ascending (None: every row, where the rows of cells not kept hold only the cell itself).
    Forward offset ``c`` of ``H`` fills column ``H + 1 + c`` of the row and, mirrored,
    column ``H - 1 - c`` of the neighbour's row (offsets are symmetric, lexicographic);
    column ``H`` is the cell itself at distance 0. Float ``(kept or C, min(k, 2 H + 1))``
    in any order, inf = none.
    """
    num_cells, width = neighbor.shape
    keep_padded = torch.cat((keep, keep.new_zeros(1)))
    both = keep_padded.index_select(0, neighbor.reshape(-1)).reshape(neighbor.shape)
    # Float32 halves the memory traffic; the kNN is approximate anyway (see _denoise).
    distance = torch.where(both & keep[:, None], squared, math.inf).to(torch.float32)
    # Rows from num_cells on absorb the mirror writes of absent neighbours, spread over
    # _SCRATCH_ROWS rows: stores to one row would serialize on the GPU.
    full = torch.empty((num_cells + _SCRATCH_ROWS, 2 * width + 1), dtype=torch.float32,
                       device=squared.device)
    full[:, :width].fill_(math.inf)
    full[:, width].fill_(0.0)
    full[:num_cells, width + 1:] = distance
    mirror = torch.arange(width - 1, -1, -1, device=neighbor.device)
    scratch = num_cells + (torch.arange(num_cells, device=neighbor.device)
                           & (_SCRATCH_ROWS - 1))
    target_row = torch.where(neighbor == num_cells, scratch[:, None], neighbor)
    # add() multiplies in the int64 of mirror: the int32 neighbour rows cannot overflow.
    slots = torch.add(mirror, target_row, alpha=2 * width + 1)
    full.view(-1)[slots.reshape(-1)] = distance.reshape(-1)
    nearest = full[:num_cells].topk(min(k, 2 * width + 1), dim=1, largest=False,
                                    sorted=False).values
    if kept is not None:
        nearest = nearest.index_select(0, kept)
    return nearest.to(squared.dtype).sqrt_()


def _remove_boundary(pair_mask: torch.Tensor, pair_key: torch.Tensor, lifted: torch.Tensor,
                     num_masks: int) -> Tuple[torch.Tensor, ...]:
    """Find the voxels that two or more lifted masks share.

    Returns the sorted unique keys of all lifted masks (pre-removal), the (mask, key) pairs
    of the lifted masks, bool ``interior`` of those pairs (key used by one lifted mask only)
    and the interior voxel count per mask (int64 ``(num_masks,)``). The interior pairs are
    left to the caller to select, with the accepted masks, in one compaction.
    """
    pair_mask, pair_key = _compress(lifted.index_select(0, pair_mask), pair_mask, pair_key)
    observed_keys, key_index, key_uses = torch.unique(pair_key, return_inverse=True,
                                                      return_counts=True)
    interior = key_uses.index_select(0, key_index) == 1
    sizes = torch.zeros(num_masks, dtype=torch.int64, device=pair_mask.device)
    sizes.index_add_(0, pair_mask, interior.to(torch.int64))
    return observed_keys, pair_mask, pair_key, interior, sizes


def _dropped(num_masks: int, alive_after: list) -> Dict[str, int]:
    """Count the masks each stage removed (one host sync); later stages count 0."""
    survivors = torch.stack([alive.sum() for alive in alive_after]).tolist()
    before = [num_masks] + survivors[:-1]
    counts = [was - now for was, now in zip(before, survivors)]
    counts += [0] * (len(DROP_REASONS) - len(counts))
    return dict(zip(DROP_REASONS, counts))
