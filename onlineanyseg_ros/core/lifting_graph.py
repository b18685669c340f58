"""Lifting in fixed-size tensors, so that one CUDA graph replays a whole keyframe.

``lifting.lift_masks`` compacts its tensors after every data-dependent step, and every
compaction reads a size back to the host: 39 host syncs and about 470 operator launches per
keyframe at 50 masks, which leaves the GPU idle most of the time. ``lift_padded`` computes
the same result with tensor sizes that depend only on the image size and a few capacities:

- masks are indexed by their label value (``LABEL_CAPACITY`` ids; id 0 is "no mask");
- points become cells by sorting packed (mask, cell) codes of every pixel; the first
  ``Capacities.cells`` cells are kept, later rows are padding;
- window neighbours come from a ``searchsorted`` over the sorted cell codes;
- DBSCAN runs on at most ``Capacities.edges`` pairs of cells within eps, and its
  components take a fixed number of hook-and-jump rounds and report whether they
  converged;
- the exact kNN of the cells whose window holds too few candidates searches a column of
  their mask (``Capacities.pending`` cells, ``Capacities.pairs`` pairs), then, where that
  is not enough, their whole mask (``Capacities.far`` and ``Capacities.far_pairs``);
- voxel association sorts at most ``Capacities.hits`` (cell, lattice point) hits;
- compactions write into buffers of a known size and return their counts on the device;
- masked entries of reductions go to scratch slots spread over ``_SCRATCH`` addresses.

Results are equal to ``lift_masks`` (up to the float summation order of the kNN sums), and
a status vector says whether a capacity was too small or a packed code out of range.
``GraphLifter`` captures ``lift_padded`` in a CUDA graph per capacity set, replays it per
keyframe with one host sync (the status and output sizes), grows the capacities and
recaptures when a frame needs more, shrinks them when a window of frames needed far less,
and falls back to ``lift_masks`` when the packed codes cannot represent a frame.
"""

import collections
import math
from typing import Dict, List, NamedTuple, Optional, Tuple
import warnings

import torch

from onlineanyseg_ros.core.config import SegmenterConfig
from onlineanyseg_ros.core.cuda_graphs import capture
from onlineanyseg_ros.core.graph_ops import (_squared_norm, bounded_sums, count_values,
                                             expand_segments, run_starts)
from onlineanyseg_ros.core.lifting import (_forward_offsets, _window_candidates,
                                           DROP_REASONS, lattice_hits, lift_masks, LiftedFrame,
                                           window_squared)
from onlineanyseg_ros.core.voxel_hash import pack_keys

# Label values index the per-mask tensors directly (mono16 label images).
LABEL_CAPACITY = 1 << 16
# Packed codes: mask id (16 bits) << 45 | three 15-bit coordinates.
_AXIS_BITS = 15
_AXIS_MASK = (1 << _AXIS_BITS) - 1
_MASK_SHIFT = 3 * _AXIS_BITS
# Window offsets reach 2 cells: coordinates are stored shifted by 2 so that neighbours of a
# valid cell never borrow from another field.
_WINDOW_SHIFT = 2
_SENTINEL = (1 << 63) - 1
_SCRATCH = 1024
# Copies of each per-label counter over pixels on CUDA (see _counts).
_LANES = 16
# Half width (cells along x and y) of the column searched for the kNN of cells whose window
# holds too few cells.
_SLAB_CELLS = 6
# Hook-and-jump rounds of DBSCAN's components (a round: one hook, _JUMPS jumps). With 2
# jumps per round every frame of three 30-keyframe sequences (~9 and 50 masks) converged
# within the 8 rounds, as with 8 jumps, and the replay took 2-3 % less (H200); with 4 rounds
# instead of 8, 6 of 30 frames did not converge and would have fallen back to lift_masks.
COMPONENT_ROUNDS = 8
_JUMPS = 2

# By default, capacities shrink to what the last SHRINK_WINDOW frames needed (with the
# growth headroom) where they hold more than twice that: one unusual frame (the first of a
# sequence often needs far more exact kNN pairs) would otherwise pad every later frame.
SHRINK_WINDOW = 64

STATUS_FIELDS = ('accepted', 'mask_keys', 'observed_keys', *DROP_REASONS, 'cells', 'edges',
                 'pending', 'pairs', 'far', 'far_pairs', 'hits', 'label_out_of_range',
                 'cell_out_of_range', 'voxel_out_of_range', 'not_converged')

# Status flags that make a frame's results wrong whatever the capacities.
_WRONG_RESULT_FLAGS = ('label_out_of_range', 'cell_out_of_range', 'voxel_out_of_range',
                       'not_converged')


class Capacities(NamedTuple):
    """Fixed tensor sizes (rows) of ``lift_padded``.

    ``cells`` of the frame; ``edges``: pairs of cells within eps; ``pending``: cells whose
    window holds too few cells for the kNN, and ``pairs`` of them with their column;
    ``far``: cells whose column is not enough either, and ``far_pairs`` with their mask;
    ``hits``: (cell, lattice point) pairs of the voxel association; ``observed_keys``:
    the frame's distinct voxel keys (the buffer the voxel hash inserts, padding included).
    """

    cells: int = 1 << 16
    edges: int = 1 << 18
    pending: int = 1 << 11
    pairs: int = 1 << 19
    far: int = 1 << 6
    far_pairs: int = 1 << 14
    hits: int = 1 << 19
    observed_keys: int = 1 << 17


class PaddedLift(NamedTuple):
    """Fixed-size outputs of ``lift_padded``; the first counts of each buffer are valid.

    Attributes:
        labels: int64 ``(LABEL_CAPACITY,)``: accepted label ids ascending, then padding.
        mask_offsets: int64 ``(LABEL_CAPACITY + 1,)``: offsets of the accepted masks.
        mask_keys: int64 ``(V,)``: post-boundary keys, mask by mask, then padding.
        observed_keys: int64 ``(capacities.observed_keys,)``: sorted unique pre-boundary
            keys, then padding.
        status: int64 ``(len(STATUS_FIELDS),)``, in ``STATUS_FIELDS`` order.
        complete: bool scalar: every capacity sufficed and no flag of a wrong result is
            set, i.e. the outputs are ``lift_masks``'s (known on the device, before the
            status is read).
    """

    labels: torch.Tensor
    mask_offsets: torch.Tensor
    mask_keys: torch.Tensor
    observed_keys: torch.Tensor
    status: torch.Tensor
    complete: torch.Tensor


def supports(config: SegmenterConfig) -> bool:
    """Whether ``lift_padded`` handles ``config``: DBSCAN's eps must fit the cell window."""
    return config.query_radius_m < 2.0 * config.voxel_size_m * (1.0 - 1e-9)


def _target(index: torch.Tensor, keep: torch.Tensor, size: int) -> torch.Tensor:
    """Return ``index`` where ``keep``, else one of ``_SCRATCH`` slots from ``size`` on.

    Reductions and scatters of fixed-size tensors carry many masked entries (padding rows,
    repeated codes): sent to a single dump slot, their atomics would serialize on one
    address. Spread over scratch slots, they cost as much as the real entries.
    """
    scratch = size + (torch.arange(index.numel(), device=index.device) & (_SCRATCH - 1))
    return torch.where(keep, index, scratch)


def _pixel_lanes(device: torch.device) -> int:
    """Lanes of the per-label reductions over pixels (see ``_counts``).

    ``_LANES`` on CUDA, where a frame of a few large masks would serialize its atomics;
    one on the CPU, where a single pass costs least.
    """
    return _LANES if device.type == 'cuda' else 1


def _lane_target(index: torch.Tensor, keep: torch.Tensor, size: int,
                 lanes: int) -> torch.Tensor:
    """``_target`` of entry ``i`` in copy ``i % lanes`` of its index: ``index * lanes + lane``.

    The copies of index ``v`` are rows ``v * lanes .. v * lanes + lanes - 1`` of a
    ``size * lanes`` table (scratch slots after it).
    """
    if lanes == 1:
        return _target(index, keep, size)
    lane = torch.arange(index.numel(), device=index.device) & (lanes - 1)
    return _target(index * lanes + lane, keep, size * lanes)


def _counts(index: torch.Tensor, keep: torch.Tensor, size: int,
            lanes: int = 1) -> torch.Tensor:
    """Int64 ``(size,)`` occurrences of each value of ``index[keep]``.

    ``lanes`` > 1 (a power of two) counts each value in that many copies, summed after:
    many entries of a few values (the pixels of a few masks) would otherwise serialize
    their atomics on a few addresses.
    """
    spread = count_values(_lane_target(index, keep, size, lanes), size * lanes + _SCRATCH)
    if lanes == 1:
        return spread[:size]
    return spread[:size * lanes].view(size, lanes).sum(1)


def _lane_reduce(index: torch.Tensor, keep: torch.Tensor, values: torch.Tensor, size: int,
                 lanes: int, reduce: str, initial: float) -> torch.Tensor:
    """``reduce`` ('amin' or 'amax') of ``values[keep]`` per ``index[keep]``, no atomics hot spot.

    Returns ``(size,) + values.shape[1:]``, ``initial`` where an index has no entry. Like
    ``_counts``, ``lanes`` > 1 reduces into that many copies per index, combined after.
    """
    target = _lane_target(index, keep, size, lanes)
    table = torch.full((size * lanes + _SCRATCH,) + values.shape[1:], initial,
                       dtype=values.dtype, device=values.device)
    if values.ndim > 1:
        target = target[:, None].expand_as(values)
    table.scatter_reduce_(0, target, values, reduce=reduce)
    per_lane = table[:size * lanes].view((size, lanes) + values.shape[1:])
    return per_lane.amin(1) if reduce == 'amin' else per_lane.amax(1)


def _sums(index: torch.Tensor, keep: torch.Tensor, values: torch.Tensor,
          size: int) -> torch.Tensor:
    """``(size,)`` sums of ``values[keep]`` per ``index[keep]``, added in entry order."""
    sums = torch.zeros(size + _SCRATCH, dtype=values.dtype, device=values.device)
    return sums.index_add_(0, _target(index, keep, size),
                           torch.where(keep, values, 0))[:size]


def _compact(keep: torch.Tensor, values: torch.Tensor, capacity: int,
             fill: int) -> torch.Tensor:
    """Write ``values[keep]`` in order into ``(capacity,)`` (``fill`` after); no host sync.

    Rows past the capacity are dropped; callers detect that from ``keep.sum()``.
    """
    rows = _kept_rows(keep, capacity)
    return torch.where(rows >= 0, values.index_select(0, rows.clamp(min=0)), fill)


def _kept_rows(keep: torch.Tensor, capacity: int) -> torch.Tensor:
    """Int64 ``(capacity,)``: the rows where bool ``keep`` is set, ascending, then -1."""
    return torch.nonzero_static(keep, size=capacity, fill_value=-1).squeeze(1)


def _mask_bounds(sorted_codes: torch.Tensor) -> torch.Tensor:
    """Int64 ``(LABEL_CAPACITY + 1,)``: mask ``m`` owns ``sorted_codes[b[m]:b[m + 1]]``."""
    return torch.searchsorted(sorted_codes, torch.arange(LABEL_CAPACITY + 1,
                                                         device=sorted_codes.device)
                              << _MASK_SHIFT)


def _mask_counts(bounds: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Int64 ``(LABEL_CAPACITY,)`` set ``flags`` per mask of codes with ``_mask_bounds``.

    ``bounded_sums``: atomics would serialize on the few masks of a frame.
    """
    return bounded_sums(flags.to(torch.int64), bounds)


def _runs(sorted_values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return bool ``first`` of each run of equal sorted values and each entry's run id."""
    first = run_starts(sorted_values)
    return first, torch.cumsum(first, 0) - 1


def _pack(mask: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """Pack int64 mask ids ``(N,)`` and coordinates ``(N, 3)`` in ``[0, 2^15)`` into codes."""
    return ((mask << _MASK_SHIFT) | (xyz[:, 0] << (2 * _AXIS_BITS)) | (xyz[:, 1] << _AXIS_BITS)
            | xyz[:, 2])


def _unpack(codes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Invert ``_pack``: mask ids ``(N,)`` and coordinates ``(N, 3)``."""
    xyz = torch.stack(((codes >> (2 * _AXIS_BITS)) & _AXIS_MASK,
                       (codes >> _AXIS_BITS) & _AXIS_MASK, codes & _AXIS_MASK), dim=1)
    return codes >> _MASK_SHIFT, xyz


def _components(num_nodes: int, i: torch.Tensor, j: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``COMPONENT_ROUNDS`` rounds of ``graph_ops.connected_components`` (uncompacted).

    Returns the labels and a bool scalar: whether they are the fixed point (every label a
    root, both ends of every edge on one label), where they equal the smallest node index
    of each component.
    """
    # Scratch slots past the nodes take the hooks of edges already joined: once a component
    # has converged, every one of its edges would otherwise hit its root's address.
    labels = torch.arange(num_nodes + _SCRATCH, dtype=torch.int64, device=i.device)
    scratch = num_nodes + (torch.arange(i.numel(), device=i.device) & (_SCRATCH - 1))
    for _ in range(COMPONENT_ROUNDS):
        label_i, label_j = labels.index_select(0, i), labels.index_select(0, j)
        high = torch.maximum(label_i, label_j)
        low = torch.minimum(label_i, label_j)
        labels = labels.scatter_reduce(0, torch.where(high != low, high, scratch), low,
                                       reduce='amin')
        for _ in range(_JUMPS):
            labels = labels.index_select(0, labels)
    # Labels of nodes only ever point at nodes (they decrease from their own index).
    labels = labels[:num_nodes]
    roots = labels.index_select(0, labels) == labels
    joined = labels.index_select(0, i) == labels.index_select(0, j)
    return labels, roots.all() & joined.all()


def _segment_mode(segment: torch.Tensor, value: torch.Tensor, live: torch.Tensor,
                  num_segments: int, num_values: int) -> torch.Tensor:
    """``graph_ops.segment_mode`` of the ``live`` entries, by sorting instead of ``unique``.

    After one sort by (segment, value), each run's length is the distance between run
    starts, and only the first entry of each run takes part in the per-segment maxima:
    all entries of a few large masks would serialize their atomics on a few addresses.
    (Running maxima over the sorted entries avoid atomics too, but ``cummax`` took 0.28 ms
    for 90k entries on the H200.)

    Returns int64 ``(num_segments,)`` modes (ties: the smallest value; ``num_values`` for a
    segment without live entries).
    """
    codes = torch.where(live, segment * num_values + value, _SENTINEL)
    sorted_codes, _ = torch.sort(codes)
    size = codes.numel()
    first, run = _runs(sorted_codes)
    # Run starts ascending, then ``size``: run r spans [starts[r], starts[r + 1]).
    starts = torch.nonzero_static(first, size=size + 1, fill_value=size).squeeze(1)
    run_length = starts.index_select(0, run + 1) - starts.index_select(0, run)
    head = first & (sorted_codes != _SENTINEL)
    code_segment = torch.div(sorted_codes, num_values, rounding_mode='floor')
    best = torch.zeros(num_segments + _SCRATCH, dtype=torch.int64, device=codes.device)
    best.scatter_reduce_(0, _target(code_segment, head, num_segments), run_length,
                         reduce='amax')
    is_best = head & (run_length == best.index_select(
        0, torch.where(head, code_segment, 0)))
    mode = torch.full((num_segments + _SCRATCH,), num_values, dtype=torch.int64,
                      device=codes.device)
    return mode.scatter_reduce_(0, _target(code_segment, is_best, num_segments),
                                sorted_codes % num_values, reduce='amin')[:num_segments]


def lift_padded(points_world: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor,
                config: SegmenterConfig, capacities: Capacities) -> PaddedLift:
    """``lifting.lift_masks`` without a host sync: every tensor size is fixed.

    Same steps and thresholds as ``lift_masks`` (see its docstring); ``supports(config)``
    must hold. Status (``STATUS_FIELDS``): the fields named like ``Capacities`` fields are
    the sizes the frame needed (results are wrong when one exceeds its capacity);
    ``label_out_of_range`` (a label >= ``LABEL_CAPACITY``), ``cell_out_of_range`` (a mask
    wider than 2^15 - 5 cells), ``voxel_out_of_range`` (the frame's voxels wider than 2^15
    - 1) and ``not_converged`` (DBSCAN's components) make the results wrong too.

    Args:
        points_world: float ``(H, W, 3)`` world points (m).
        valid: bool ``(H, W)`` pixels with usable depth.
        labels: int ``(H, W)`` mask ids, 0 (or negative) = none.
        config: thresholds.
        capacities: fixed sizes.

    Returns:
        ``PaddedLift`` on the device of ``points_world``.

    """
    device = points_world.device
    voxel_size, eps = config.voxel_size_m, config.query_radius_m
    num_cells = capacities.cells
    flat_labels = labels.reshape(-1).to(device=device, dtype=torch.int64)
    label_out_of_range = (flat_labels >= LABEL_CAPACITY).any()
    mask_of_pixel = flat_labels.clamp(0, LABEL_CAPACITY - 1)
    labelled = mask_of_pixel > 0
    lanes = _pixel_lanes(device)
    pixel_valid = valid.reshape(-1) & labelled
    # Pixels per (mask, valid depth) in one pass.
    pixels = _counts(2 * mask_of_pixel + pixel_valid, labelled, 2 * LABEL_CAPACITY,
                     lanes).view(LABEL_CAPACITY, 2)
    present = pixels.sum(1) > 0
    alive = pixels[:, 1] >= config.min_mask_pixels
    alive_after = [present, alive]

    # (b) voxel downsample: cells of each mask's own grid, anchored at its minimum.
    pixel_alive = pixel_valid & alive.index_select(0, mask_of_pixel)
    points = points_world.reshape(-1, 3).to(torch.float64)
    # Float64: on the H200, 16-lane amin scatters of float32 (and int32) took 0.42 ms
    # against 0.26 ms for float64.
    lower = _lane_reduce(mask_of_pixel, pixel_alive, points, LABEL_CAPACITY, lanes, 'amin',
                         math.inf)
    anchor = lower - 0.5 * voxel_size
    local = torch.floor((points - anchor.index_select(0, mask_of_pixel)) / voxel_size)
    limit = _AXIS_MASK - 2 * _WINDOW_SHIFT
    local = torch.where(pixel_alive[:, None], local, 0.0)
    cell_out_of_range = (local > limit).any()
    local = local.clamp(0, limit).to(torch.int64) + _WINDOW_SHIFT
    pixel_code = torch.where(pixel_alive, _pack(mask_of_pixel, local), _SENTINEL)
    sorted_code, order = torch.sort(pixel_code)
    first, cell_of_sorted = _runs(sorted_code)
    needed_cells = (first & (sorted_code != _SENTINEL)).sum()
    cell_of_pixel = torch.empty_like(cell_of_sorted).scatter_(0, order, cell_of_sorted)
    in_cell = pixel_alive & (cell_of_pixel < num_cells)
    # Summed in pixel order, as lift_masks does: the same float rounding on the CPU.
    sums = torch.zeros((num_cells + _SCRATCH, 3), dtype=torch.float64, device=device)
    sums.index_add_(0, _target(cell_of_pixel, in_cell, num_cells),
                    torch.where(in_cell[:, None], points, 0.0))
    counts = _counts(cell_of_pixel, in_cell, num_cells)
    cell_code = torch.full((num_cells + _SCRATCH,), _SENTINEL, dtype=torch.int64,
                           device=device)
    cell_code.scatter_(0, _target(cell_of_sorted, first & (cell_of_sorted < num_cells),
                                  num_cells), sorted_code)
    cell_code = cell_code[:num_cells]
    live = cell_code != _SENTINEL
    cell_mask, _ = _unpack(torch.where(live, cell_code, 0))
    # Cells are sorted by code, mask first: per-mask counts of cells are prefix sums.
    cell_bounds = _mask_bounds(cell_code)
    cells = sums[:num_cells] / torch.where(live, counts, 1)[:, None].to(torch.float64)

    # (c) DBSCAN on the window of forward offsets, (d) statistical outlier removal.
    forward = _forward_offsets(max(1.0, eps / voxel_size), device)
    offset_code = (forward[:, 0] << (2 * _AXIS_BITS)) + (forward[:, 1] << _AXIS_BITS) \
        + forward[:, 2]
    wanted = torch.where(live[:, None], cell_code[:, None] + offset_code, -1)
    slot = torch.searchsorted(cell_code, wanted).clamp_(max=num_cells - 1)
    neighbor = torch.where(cell_code.index_select(0, slot.reshape(-1)).reshape(slot.shape)
                           == wanted, slot, num_cells)
    flat = neighbor.reshape(-1)
    squared = window_squared(cells, neighbor)
    within = squared <= eps * eps
    # The pairs within eps (each once), compacted: unused slots become self-loops of
    # scratch nodes past the padding row.
    edges_needed = within.sum()
    edge = _kept_rows(within.reshape(-1), capacities.edges)
    used = edge >= 0
    edge = edge.clamp(min=0)
    spare = num_cells + 1 + (torch.arange(capacities.edges, device=device) & (_SCRATCH - 1))
    edge_row = torch.where(used, torch.div(edge, neighbor.shape[1], rounding_mode='floor'),
                           spare)
    edge_other = torch.where(used, flat.index_select(0, edge), spare)
    degree = within.sum(1) + _counts(edge_other, used, num_cells)
    # Padding and scratch nodes are never core.
    core = torch.cat(((degree + 1 >= config.denoise_min_neighbors) & live,
                      torch.zeros(1 + _SCRATCH, dtype=torch.bool, device=device)))
    core_row, core_other = core.index_select(0, edge_row), core.index_select(0, edge_other)
    # Only edges between core cells join components.
    joined = core_row & core_other
    component, converged = _components(num_cells + 1 + _SCRATCH,
                                       torch.where(joined, edge_row, spare),
                                       torch.where(joined, edge_other, spare))
    none = num_cells + 1
    label = torch.cat((torch.where(core[:num_cells], component[:num_cells], none),
                       component.new_full((_SCRATCH,), none)))
    # Border cells take the smallest component among their core neighbours (both orders).
    label.scatter_reduce_(0, _target(edge_row, ~core_row & core_other, num_cells),
                          component.index_select(0, edge_other), reduce='amin')
    label.scatter_reduce_(0, _target(edge_other, core_row & ~core_other, num_cells),
                          component.index_select(0, edge_row), reduce='amin')
    label = label[:num_cells]
    shifted = torch.where(label == none, 0, label + 1)
    mode = _segment_mode(cell_mask, shifted, live, LABEL_CAPACITY, none + 1)
    keep = live & (shifted == mode.index_select(0, cell_mask))
    k = config.outlier_neighbors
    if k > 0:
        kept_per_mask = _mask_counts(cell_bounds, keep)
        mean_distance, knn_needed = _mean_knn_distance(
            cells, cell_code, cell_mask, keep, kept_per_mask, neighbor, squared, k, voxel_size,
            capacities)
        positive = keep & (mean_distance > 0)
        per_mask = kept_per_mask.to(torch.float64)
        cloud_mean = bounded_sums(torch.where(positive, mean_distance, 0.0),
                                  cell_bounds) / per_mask
        squares = bounded_sums(torch.where(
            positive, (mean_distance - cloud_mean.index_select(0, cell_mask)) ** 2, 0.0),
            cell_bounds)
        threshold = cloud_mean + config.outlier_std_ratio * torch.sqrt(squares / (per_mask - 1))
        inlier = positive & (mean_distance < threshold.index_select(0, cell_mask))
    else:
        inlier = keep
        knn_needed = dict.fromkeys(('pending', 'pairs', 'far', 'far_pairs'),
                                   torch.zeros((), dtype=torch.int64, device=device))
    alive = alive & (_mask_counts(cell_bounds, inlier) >= config.min_mask_points)
    alive_after.append(alive)
    surviving = inlier & alive.index_select(0, cell_mask)

    # (f) voxel association: every lattice point within the radius of a surviving cell.
    per_axis, start, hit = lattice_hits(cells, voxel_size, eps)
    hit &= surviving[:, None]
    covered = _mask_counts(cell_bounds, hit.any(1)).to(torch.float64)
    coverage = covered / _mask_counts(cell_bounds, surviving).to(torch.float64)
    alive = alive & (coverage >= config.coverage_min)
    alive_after.append(alive)
    # The (cell, lattice point) hits, compacted: about a third of the candidates.
    flat_hit = hit.reshape(-1)
    hits_needed = flat_hit.sum()
    hit_index = _kept_rows(flat_hit, capacities.hits)
    real_hit = hit_index >= 0
    hit_cell = torch.div(hit_index.clamp(min=0), per_axis ** 3, rounding_mode='floor')
    hit_step = hit_index.clamp(min=0) % per_axis ** 3
    steps = torch.stack(torch.meshgrid(*[torch.arange(per_axis, device=device)] * 3,
                                       indexing='ij'), dim=-1).reshape(-1, 3)
    ijk = start.index_select(0, hit_cell) + steps.index_select(0, hit_step)
    # Any origin at or below every hit packs the same keys: the smallest window start.
    origin = torch.where(surviving[:, None], start, torch.iinfo(torch.int64).max).amin(0)
    relative = torch.where(real_hit[:, None], ijk - origin, 0)
    voxel_out_of_range = (relative > _AXIS_MASK).any()
    pair_code = torch.where(real_hit, _pack(cell_mask.index_select(0, hit_cell),
                                            relative.clamp(max=_AXIS_MASK)), _SENTINEL)
    pair_code, _ = torch.sort(pair_code)
    first, _ = _runs(pair_code)
    unique_pair = first & (pair_code != _SENTINEL)
    pair_mask, pair_xyz = _unpack(torch.where(unique_pair, pair_code, 0))
    pair_key = pack_keys(pair_xyz + origin)
    pair_bounds = _mask_bounds(pair_code)
    alive = alive & (_mask_counts(pair_bounds, unique_pair) >= config.min_mask_points)
    alive_after.append(alive)

    # (g) boundary removal between the lifted masks.
    lifted_pair = unique_pair & alive.index_select(0, pair_mask)
    key_sorted, key_order = torch.sort(torch.where(lifted_pair, pair_key, _SENTINEL))
    key_first, _ = _runs(key_sorted)
    key_live = key_sorted != _SENTINEL
    # A key used by one lifted mask starts and ends its run.
    key_last = torch.cat((key_first[1:], key_first.new_ones(1)))
    interior = torch.empty_like(key_first).scatter_(0, key_order, key_first & key_last)
    interior &= lifted_pair
    sizes = _mask_counts(pair_bounds, interior)
    alive = alive & (sizes > config.min_voxels_after_boundary)
    alive_after.append(alive)
    accepted_pair = interior & alive.index_select(0, pair_mask)
    observed = key_first & key_live
    capacity = pair_code.numel()
    mask_keys = _compact(accepted_pair, pair_key, capacity, 0)
    observed_keys = _compact(observed, key_sorted, capacities.observed_keys, 0)
    label_ids = torch.arange(LABEL_CAPACITY, device=device)
    accepted_labels = _compact(alive, label_ids, LABEL_CAPACITY, 0)
    accepted_sizes = _compact(alive, sizes, LABEL_CAPACITY, 0)
    offsets = torch.cat((accepted_sizes.new_zeros(1), torch.cumsum(accepted_sizes, 0)))
    survivors = torch.stack([stage.sum() for stage in alive_after])
    status = torch.cat((torch.stack((alive.sum(), accepted_pair.sum(), observed.sum())),
                        survivors[:-1] - survivors[1:],
                        torch.stack((needed_cells, edges_needed, knn_needed['pending'],
                                     knn_needed['pairs'], knn_needed['far'],
                                     knn_needed['far_pairs'], hits_needed,
                                     label_out_of_range.long(), cell_out_of_range.long(),
                                     voxel_out_of_range.long(), (~converged).long()))))
    complete = torch.stack(
        [status[STATUS_FIELDS.index(name)] <= getattr(capacities, name)
         for name in Capacities._fields]
        + [status[STATUS_FIELDS.index(flag)] == 0 for flag in _WRONG_RESULT_FLAGS]).all()
    return PaddedLift(accepted_labels, offsets, mask_keys, observed_keys, status, complete)


def _mean_knn_distance(cells: torch.Tensor, cell_code: torch.Tensor, cell_mask: torch.Tensor,
                       keep: torch.Tensor, kept_per_mask: torch.Tensor, neighbor: torch.Tensor,
                       squared: torch.Tensor, k: int, voxel_size: float,
                       capacities: Capacities) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """``graph_ops.knn_mean_distance`` of the kept cells, exact where the window is short.

    ``cell_code`` holds the cells' sorted packed codes (padding last), ``kept_per_mask`` the
    kept cells per mask id. ``need = min(k, kept cells of the mask)``. A kept cell whose
    window holds ``need`` kept cells takes their mean (the approximation
    ``lifting._denoise`` describes). The others
    (up to ``capacities.pending``) search the column of their mask within ``_SLAB_CELLS``
    cells along x and y (one row range per x: cells are sorted by mask, x, y): a cell
    outside it is at least ``_SLAB_CELLS * voxel_size`` away, so a need-th smallest
    distance up to that is exact. The rest (up to ``capacities.far``) measure every cell of
    their mask. Cells that are not kept count as infinitely far.

    Returns float64 ``(C,)`` mean distances (0 for cells not kept) and the int64 sizes the
    frame needed: ``pending``, ``pairs`` (column pairs), ``far`` and ``far_pairs``.
    """
    device = cells.device
    num_cells = cells.shape[0]
    candidates = _window_candidates(neighbor, squared, keep, None, k)
    need = kept_per_mask.clamp(max=k).index_select(0, cell_mask)
    finite = torch.isfinite(candidates)
    enough = finite.sum(1) >= need
    sums = torch.where(finite, candidates, 0.0).sum(1)
    result = torch.where(keep & enough, sums / need.clamp(min=1).to(torch.float64), 0.0)
    result = torch.cat((result, result.new_zeros(_SCRATCH)))
    needed = {}

    pending = keep & ~enough
    needed['pending'] = pending.sum()
    rows = _kept_rows(pending, capacities.pending)
    rows = torch.where(rows >= 0, rows, num_cells)
    real_row = rows < num_cells
    row_or_zero = torch.where(real_row, rows, 0)
    # One row range per x of the column: cells sorted by (mask, x, y) make each x's cells
    # with y in [y - W, y + W] one range.
    code = cell_code.index_select(0, row_or_zero)
    mask_field = (code >> _MASK_SHIFT) << _MASK_SHIFT
    x = (code >> (2 * _AXIS_BITS)) & _AXIS_MASK
    y = (code >> _AXIS_BITS) & _AXIS_MASK
    column_x = x[:, None] + torch.arange(-_SLAB_CELLS, _SLAB_CELLS + 1, device=device)
    x_field = mask_field[:, None] + (column_x.clamp(0, _AXIS_MASK) << (2 * _AXIS_BITS))
    low = x_field + ((y - _SLAB_CELLS).clamp(min=0) << _AXIS_BITS)[:, None]
    high = torch.minimum(x_field + ((y + _SLAB_CELLS + 1) << _AXIS_BITS)[:, None],
                         x_field + (1 << (2 * _AXIS_BITS)))
    starts = torch.searchsorted(cell_code, low.reshape(-1))
    lengths = torch.searchsorted(cell_code, high.reshape(-1)) - starts
    in_range = (real_row[:, None] & (column_x >= 0) & (column_x <= _AXIS_MASK)).reshape(-1)
    lengths = torch.where(in_range, lengths, 0)
    needed['pairs'] = lengths.sum()
    row_need = need.index_select(0, row_or_zero)
    sums, found, kth = _smallest_in_ranges(cells, keep, row_or_zero, starts, lengths, row_need,
                                           capacities.pairs, 2 * _SLAB_CELLS + 1)
    exact = real_row & (found >= row_need) & (kth <= _SLAB_CELLS * voxel_size)
    result.scatter_(0, _target(rows, exact, num_cells),
                    sums / row_need.clamp(min=1).to(torch.float64))

    far = _compact(real_row & ~exact, rows, capacities.far, num_cells)
    needed['far'] = (real_row & ~exact).sum()
    real_far = far < num_cells
    far_or_zero = torch.where(real_far, far, 0)
    bounds = _mask_bounds(cell_code)
    mask_start = bounds[:-1]
    cells_per_mask = bounds[1:] - mask_start
    far_mask = cell_mask.index_select(0, far_or_zero)
    far_lengths = torch.where(real_far, cells_per_mask.index_select(0, far_mask), 0)
    needed['far_pairs'] = far_lengths.sum()
    far_need = need.index_select(0, far_or_zero)
    sums, _, _ = _smallest_in_ranges(cells, keep, far_or_zero,
                                     mask_start.index_select(0, far_mask), far_lengths,
                                     far_need, capacities.far_pairs, 1)
    result.scatter_(0, _target(far, real_far, num_cells),
                    sums / far_need.clamp(min=1).to(torch.float64))
    return result[:num_cells], needed


def _smallest_in_ranges(cells: torch.Tensor, keep: torch.Tensor, rows: torch.Tensor,
                        starts: torch.Tensor, lengths: torch.Tensor, need: torch.Tensor,
                        capacity: int, ranges_per_query: int
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Find the ``need[r]`` smallest distances of query ``rows[r]`` to kept cells of ranges.

    Query ``r`` owns the ``ranges_per_query`` cell row ranges ``[starts[i], starts[i] +
    lengths[i])`` for ``i`` from ``r * ranges_per_query`` on.
    The (query, cell) pairs are enumerated into ``capacity`` entries (pairs past it are
    lost: the caller compares ``lengths.sum()``), query by query, and ranked by one sort of
    a packed key: the query in the high bits, the leading bits of the distance's float64
    pattern below (ordered like the distance for non-negative values). Each query's pairs
    keep their offset in the enumeration, nearest first. Distances closer than 2^-32
    relative may swap ranks; the chosen sum then differs by as little.

    Returns float64 sums of the chosen distances, int64 counts of finite distances and the
    float64 largest chosen distance (0 when none), all ``(Q,)``.
    """
    device = cells.device
    num_queries = rows.numel()
    # A last range takes the unused entries.
    bucket = lengths.new_full((1,), capacity)
    segment, position = expand_segments(torch.cat((starts, bucket.new_zeros(1))),
                                        torch.cat((lengths, bucket)), capacity)
    owner = torch.div(segment, ranges_per_query, rounding_mode='floor')
    real_pair = owner < num_queries
    position = position.clamp(max=cells.shape[0] - 1)
    padded_rows = torch.cat((rows, rows.new_zeros(1)))
    difference = (cells.index_select(0, padded_rows.index_select(0, owner))
                  - cells.index_select(0, position))
    distance = _squared_norm(difference).sqrt_()
    usable = real_pair & keep.index_select(0, position)
    distance = torch.where(usable, distance, math.inf)
    # Owners run from 0 to num_queries (the unused entries): owner_bits bits of the key.
    owner_bits = num_queries.bit_length()
    key = (owner << (63 - owner_bits)) | (distance.view(torch.int64) >> owner_bits)
    _, ranked = torch.sort(key)
    ranked_distance = distance.index_select(0, ranked)
    owner_lengths = lengths.reshape(num_queries, ranges_per_query).sum(1)
    # Clamped: pairs past the capacity are lost (the frame is rerun with more).
    owner_end = torch.cumsum(owner_lengths, 0).clamp_(max=capacity)
    owner_start = (owner_end - owner_lengths).clamp_(min=0)
    # Inf sorts last: a query's finite distances lead its entries.
    finite = torch.isfinite(ranked_distance)
    finite_before = torch.nn.functional.pad(torch.cumsum(finite, 0), (1, 0))
    found = finite_before.index_select(0, owner_end) - finite_before.index_select(0, owner_start)
    take = torch.minimum(need, found)
    # The sort keeps every query's entries where the enumeration put them.
    rank = (torch.arange(capacity, device=device)
            - torch.cat((owner_start, owner_start.new_zeros(1))).index_select(0, owner))
    chosen = rank < torch.cat((take, take.new_zeros(1))).index_select(0, owner)
    sums = _sums(owner, chosen, ranked_distance, num_queries)
    last = (owner_start + take - 1).clamp(0, capacity - 1)
    kth = torch.where(take > 0, ranked_distance.index_select(0, last), 0.0)
    return sums, found, kth


class GraphLifter:
    """``lift_masks`` for one image size, replayed from a CUDA graph on CUDA devices.

    Per call: copy the inputs into static buffers, replay, read the status and output sizes
    (the one host sync), copy the outputs out; ``launch`` queues the replay and its
    ``PendingLift.result()`` reads it later, so that other work can overlap the replay. A
    frame that needs larger capacities grows them (25-40 % headroom), recaptures and
    replays again; after ``shrink_window`` frames without a capacity change, a capacity
    over twice what those frames needed (with the same headroom) shrinks to that, and the
    next frame recaptures. A frame the packed codes cannot represent, or whose components
    did not converge, runs ``lift_masks``.
    Without CUDA (or with ``use_graph=False``) ``lift_padded`` runs eagerly, which tests the
    same code paths on the CPU. If a capture fails (a driver or an operator that graphs do
    not support), the lifter warns once and runs ``lift_masks`` from then on.

    Attributes:
        stats: calls, replays, captures, regrowths, shrinks and fallbacks (frames lifted
            by ``lift_masks``) so far.
        disabled_reason: why capturing failed, None while it works.
    """

    def __init__(self, config: SegmenterConfig, device: torch.device,
                 capacities: Capacities = Capacities(), use_graph: Optional[bool] = None,
                 shrink_window: int = SHRINK_WINDOW):
        if not supports(config):
            raise ValueError('GraphLifter needs query_radius_m < 2 * voxel_size_m')
        self.config = config
        self.device = torch.device(device)
        self.capacities = capacities
        self.use_graph = self.device.type == 'cuda' if use_graph is None else use_graph
        self.stats: Dict[str, int] = {'calls': 0, 'replays': 0, 'captures': 0,
                                      'regrowths': 0, 'shrinks': 0, 'fallbacks': 0}
        self.disabled_reason: Optional[str] = None
        self._graph = None
        self._inputs: Optional[Tuple[torch.Tensor, ...]] = None
        self._outputs: Optional[PaddedLift] = None
        # Recorded once the last result was copied out of the static output buffers.
        self._released: Optional[torch.cuda.Event] = None
        # Sizes needed by the frames since the capacities last changed (at most a window).
        self._recent_needs: collections.deque = collections.deque(maxlen=shrink_window)

    def __call__(self, points_world: torch.Tensor, valid: torch.Tensor,
                 labels: torch.Tensor) -> LiftedFrame:
        """Lift one frame (arguments as ``lift_masks``)."""
        return self.launch(points_world, valid, labels).result()

    def launch(self, points_world: torch.Tensor, valid: torch.Tensor,
               labels: torch.Tensor) -> 'PendingLift':
        """Queue the lifting of one frame on the current stream; ``result()`` reads it.

        Nothing here waits for the device, so a caller that launches on a side stream can
        queue other work while the replay runs (the inputs must then stay valid for that
        stream: ``Tensor.record_stream``). One frame at a time: the outputs live in the
        graph's static buffers until ``result()`` has copied them. Arguments as
        ``lift_masks``.
        """
        self.stats['calls'] += 1
        if self._released is not None:
            # The static buffers are rewritten: the last result must have been copied out.
            torch.cuda.current_stream(self.device).wait_event(self._released)
        inputs = (points_world, valid, labels)
        outputs = self._run(*inputs)
        done = None
        if self.device.type == 'cuda':
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
        return PendingLift(self, inputs, outputs, done)

    def _finish(self, inputs: Tuple[torch.Tensor, ...], outputs: Optional[PaddedLift],
                status_values: Optional[List[int]]) -> Tuple[LiftedFrame, bool]:
        """Read a launched lift (``PendingLift.result``): grow and rerun, or fall back.

        ``status_values``: the launched outputs' status when the caller has read it.
        Returns the frame and whether it comes from the launched outputs.
        """
        launched = True
        while True:
            if outputs is None:
                status = None
            else:
                if status_values is None:
                    status_values = outputs.status.tolist()
                status = dict(zip(STATUS_FIELDS, status_values))
            if status is None or any(status[flag] for flag in _WRONG_RESULT_FLAGS):
                self.stats['fallbacks'] += 1
                return lift_masks(*inputs, self.config), False
            grown = self._grown(status)
            if grown == self.capacities:
                break
            self._set_capacities(grown)
            self.stats['regrowths'] += 1
            outputs, status_values, launched = self._run(*inputs), None, False
        accepted, mask_keys, observed = (status['accepted'], status['mask_keys'],
                                         status['observed_keys'])
        lifted = LiftedFrame(labels=outputs.labels[:accepted].clone(),
                             observed_keys=outputs.observed_keys[:observed].clone(),
                             mask_keys=outputs.mask_keys[:mask_keys].clone(),
                             mask_offsets=outputs.mask_offsets[:accepted + 1].clone(),
                             dropped={reason: status[reason] for reason in DROP_REASONS})
        if self.device.type == 'cuda':
            self._released = torch.cuda.Event()
            self._released.record(torch.cuda.current_stream(self.device))
        self._recent_needs.append(tuple(status[name] for name in Capacities._fields))
        self._shrink_if_oversized()
        return lifted, launched

    def _grown(self, status: Dict[str, int]) -> Capacities:
        """Capacities that hold the frame of ``status`` with 25-40 % headroom."""
        return Capacities(*(capacity if status[name] <= capacity else _fitted(status[name])
                            for name, capacity in zip(Capacities._fields, self.capacities)))

    def _shrink_if_oversized(self) -> None:
        """Shrink the capacities over twice what a full window of frames needed."""
        if len(self._recent_needs) < self._recent_needs.maxlen:
            return
        wanted = [_fitted(max(needs)) for needs in zip(*self._recent_needs)]
        shrunk = Capacities(*(fitted if capacity > 2 * fitted else capacity
                              for capacity, fitted in zip(self.capacities, wanted)))
        if shrunk != self.capacities:
            self._set_capacities(shrunk)
            self.stats['shrinks'] += 1

    def _set_capacities(self, capacities: Capacities) -> None:
        """Use ``capacities`` from the next run on (a new capture); restart the window."""
        self.capacities = capacities
        self._graph = None
        self._recent_needs.clear()

    def _run(self, points_world: torch.Tensor, valid: torch.Tensor,
             labels: torch.Tensor) -> Optional[PaddedLift]:
        """Run ``lift_padded`` once: by graph replay when enabled, else eagerly.

        Returns None when capturing failed (``disabled_reason`` says why).
        """
        if self.disabled_reason is not None:
            return None
        if not self.use_graph:
            return lift_padded(points_world.to(self.device), valid.to(self.device),
                               labels.to(self.device), self.config, self.capacities)
        inputs = (points_world, valid, labels)
        if self._graph is None or any(buffer.shape != value.shape or buffer.dtype != value.dtype
                                      for buffer, value in zip(self._inputs, inputs)):
            try:
                self._capture(inputs)
            except (RuntimeError, ValueError) as error:
                self.disabled_reason = f'{type(error).__name__}: {error}'
                self._graph = self._inputs = self._outputs = None
                warnings.warn(f'GraphLifter: CUDA graph capture failed, lifting eagerly from '
                              f'now on ({self.disabled_reason})', RuntimeWarning)
                return None
        for buffer, value in zip(self._inputs, inputs):
            buffer.copy_(value, non_blocking=True)
        self._graph.replay()
        self.stats['replays'] += 1
        return self._outputs

    def _capture(self, inputs: Tuple[torch.Tensor, ...]) -> None:
        """Capture ``lift_padded`` on static copies of ``inputs`` (after a warm-up run)."""
        self._graph = None
        self._inputs = tuple(value.to(self.device).clone() for value in inputs)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            # Warm-up: lazy initialisation (cached offsets, library handles) outside capture.
            lift_padded(*self._inputs, self.config, self.capacities)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with capture(graph, self.device):
            self._outputs = lift_padded(*self._inputs, self.config, self.capacities)
        self._graph = graph
        self.stats['captures'] += 1


def _fitted(needed: int) -> int:
    """Return a capacity for ``needed`` rows with 25-40 % headroom (at least one row).

    Eight steps per power of two: padding costs time in every frame.
    """
    wanted = max(1.0, needed * 1.25)
    step = 1 << max(0, math.floor(math.log2(wanted)) - 3)
    return step * math.ceil(wanted / step)


class PendingLift:
    """A frame queued by ``GraphLifter.launch``: ``result()`` reads it (one host sync).

    The stream that reads it first waits for the stream the lift was launched on. A frame
    that needs larger capacities or ``lift_masks`` is rerun there, on the reading stream.

    Attributes:
        launched: after ``result()``: whether the frame came from the launched outputs
            (False: it was rerun).
    """

    def __init__(self, lifter: GraphLifter, inputs: Tuple[torch.Tensor, ...],
                 outputs: Optional[PaddedLift], done: Optional[torch.cuda.Event]) -> None:
        self._lifter = lifter
        self._inputs = inputs
        self._outputs = outputs
        self._done = done
        self.launched = False

    def _wait(self) -> None:
        """Make the current stream wait for the launch (once)."""
        if self._done is not None:
            torch.cuda.current_stream(self._lifter.device).wait_event(self._done)
            self._done = None

    def observed(self) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Return the launched outputs' observed keys on the device, before any host read.

        Returns ``(keys, valid, status)``: int64 ``(V,)`` padded keys, bool ``(V,)`` for
        the frame's keys (none at all unless the outputs are complete, so that a frame to
        be rerun inserts nothing), and the int64 status to read (``result(status=...)``);
        None when nothing was launched (capturing failed).
        """
        if self._outputs is None:
            return None
        self._wait()
        keys = self._outputs.observed_keys
        count = self._outputs.status[STATUS_FIELDS.index('observed_keys')]
        valid = (torch.arange(keys.numel(), device=keys.device) < count) & self._outputs.complete
        return keys, valid, self._outputs.status

    def result(self, status: Optional[List[int]] = None) -> LiftedFrame:
        """Return the lifted frame, as ``lift_masks`` does.

        ``status``: the values of ``observed()``'s status if the caller read them.
        """
        self._wait()
        lifted, self.launched = self._lifter._finish(self._inputs, self._outputs, status)
        return lifted
