"""Batched point-graph primitives in torch: radius search, kNN, components, segment modes.

Every function works on CPU and CUDA tensors, keeps results on the input device and has no
Python loop over points or pairs. ``batch`` tensors are int64 ids >= 0; points of different
batch ids never interact. Distances are in the unit of the coordinates (metres here).
"""

import itertools
import math
from typing import Optional, Tuple

import torch

_NEIGHBOR_OFFSETS = tuple(itertools.product((-1, 0, 1), repeat=3))
# Cells slightly larger than the radius keep every in-radius pair inside the 27-cell window
# even when the float division p / cell rounds across a cell border.
_CELL_PADDING = 1.0001
_MAX_CODE = 1 << 62


def _cell_codes(query_cells: torch.Tensor, query_batch: torch.Tensor,
                reference_cells: torch.Tensor, reference_batch: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode (batch, cell) pairs densely so that neighbour cells differ by fixed offsets.

    Returns int64 codes of the query and reference cells and the int64 ``(27,)`` code
    offsets of the 27 neighbour cells. One host sync reads the coordinate bounds.
    """
    all_cells = torch.cat((query_cells, reference_cells))
    all_batch = torch.cat((query_batch, reference_batch))
    bounds = torch.cat((all_cells.min(0).values, all_cells.max(0).values,
                        all_batch.max().reshape(1))).tolist()
    origin = [value - 1 for value in bounds[:3]]
    extent = [high - low + 3 for low, high in zip(bounds[:3], bounds[3:6])]
    if (bounds[6] + 1) * extent[0] * extent[1] * extent[2] >= _MAX_CODE:
        raise ValueError('radius search grid too large for int64 codes: radius too small for '
                         'the extent of the points')
    strides = (extent[1] * extent[2], extent[2], 1)
    origin_t = torch.tensor(origin, dtype=torch.int64, device=all_cells.device)
    strides_t = torch.tensor(strides, dtype=torch.int64, device=all_cells.device)
    batch_stride = extent[0] * strides[0]

    def encode(cells: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return batch * batch_stride + ((cells - origin_t) * strides_t).sum(1)

    offsets = torch.tensor(_NEIGHBOR_OFFSETS, dtype=torch.int64, device=all_cells.device)
    return (encode(query_cells, query_batch), encode(reference_cells, reference_batch),
            (offsets * strides_t).sum(1))


def _squared_norm(vectors: torch.Tensor) -> torch.Tensor:
    """Row-wise squared norm of ``(N, 3)`` vectors (much faster than ``.sum(1)`` on CPU)."""
    x, y, z = vectors.unbind(1)
    return torch.addcmul(torch.addcmul(x * x, y, y), z, z)


def _chunk_bounds(totals: torch.Tensor, max_candidates: int) -> list:
    """Split rows into consecutive chunks of about ``max_candidates`` summed ``totals``."""
    before = torch.cumsum(totals, 0) - totals
    chunk_of_row = torch.div(before, max_candidates, rounding_mode='floor')
    _, sizes = torch.unique_consecutive(chunk_of_row, return_counts=True)
    ends = torch.cumsum(sizes, 0).tolist()
    return list(zip([0] + ends[:-1], ends))


def default_max_candidates(device: torch.device) -> int:
    """Candidate pairs per chunk: small on CPU (cache-resident), large on GPUs."""
    return 1 << 24 if device.type == 'cuda' else 1 << 17


def radius_search(query: torch.Tensor, query_batch: torch.Tensor, reference: torch.Tensor,
                  reference_batch: torch.Tensor, radius: float,
                  max_candidates: Optional[int] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Find all (query, reference) pairs of the same batch within ``radius``.

    A uniform grid of cell size ~``radius`` is sorted once; each query looks up its 27
    neighbour cells among the occupied cells by ``searchsorted``. Queries are processed in
    chunks of about ``max_candidates`` candidate pairs (``default_max_candidates``) to
    bound memory.

    Args:
        query: float ``(Q, 3)`` points.
        query_batch: int64 ``(Q,)`` batch ids >= 0.
        reference: float ``(R, 3)`` points, same dtype and device.
        reference_batch: int64 ``(R,)`` batch ids >= 0.
        radius: inclusive search radius (> 0); compared as squared distances.
        max_candidates: candidate pairs evaluated at once.

    Returns:
        ``(query_index, reference_index, distance)``: int64, int64 and ``query.dtype``
        ``(E,)`` tensors, ordered by query index. A query point present in ``reference``
        pairs with itself at distance 0.

    """
    device = query.device
    empty = torch.empty(0, dtype=torch.int64, device=device)
    if query.shape[0] == 0 or reference.shape[0] == 0:
        return empty, empty.clone(), torch.empty(0, dtype=query.dtype, device=device)
    cell = radius * _CELL_PADDING
    query_codes, reference_codes, offsets = _cell_codes(
        torch.floor(query / cell).to(torch.int64), query_batch,
        torch.floor(reference / cell).to(torch.int64), reference_batch)
    sorted_codes, order = torch.sort(reference_codes)
    sorted_reference = reference.index_select(0, order)
    cell_codes, cell_sizes = torch.unique_consecutive(sorted_codes, return_counts=True)
    cell_starts = torch.cumsum(cell_sizes, 0) - cell_sizes
    wanted = query_codes[:, None] + offsets[None, :]
    slot = torch.searchsorted(cell_codes, wanted).clamp_(max=cell_codes.numel() - 1)
    starts = cell_starts[slot]
    counts = torch.where(cell_codes[slot] == wanted, cell_sizes[slot], 0)
    query_parts, reference_parts, distance_parts = [], [], []
    squared_radius = radius * radius
    chunk_size = max_candidates or default_max_candidates(device)
    for begin, end in _chunk_bounds(counts.sum(1), chunk_size):
        chunk_counts = counts[begin:end].reshape(-1)
        run_starts = torch.cumsum(chunk_counts, 0) - chunk_counts
        total = int(run_starts[-1] + chunk_counts[-1])
        run = torch.repeat_interleave(torch.arange(chunk_counts.numel(), device=device),
                                      chunk_counts, output_size=total)
        # Position in sorted reference order = run start in the cell + rank within the run.
        shift = starts[begin:end].reshape(-1) - run_starts
        position = torch.arange(total, device=device) + shift.index_select(0, run)
        query_index = torch.div(run, len(_NEIGHBOR_OFFSETS), rounding_mode='floor') + begin
        difference = query.index_select(0, query_index) - sorted_reference.index_select(
            0, position)
        squared = _squared_norm(difference)
        close = torch.nonzero(squared <= squared_radius).squeeze(1)
        query_parts.append(query_index.index_select(0, close))
        reference_parts.append(order.index_select(0, position.index_select(0, close)))
        distance_parts.append(squared.index_select(0, close).sqrt_())
    return torch.cat(query_parts), torch.cat(reference_parts), torch.cat(distance_parts)


def radius_pairs(points: torch.Tensor, batch: torch.Tensor, radius: float,
                 max_candidates: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return int64 ``(i, j)``: all ordered pairs ``i != j`` of one batch within ``radius``.

    ``points`` float ``(P, 3)``, ``batch`` int64 ``(P,)``; see ``radius_search``.
    """
    i, j, _ = radius_search(points, batch, points, batch, radius, max_candidates)
    distinct = i != j
    return i[distinct], j[distinct]


def connected_components(num_nodes: int, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Label the connected components of an undirected graph.

    Min-label hooking (``scatter_reduce amin`` of root labels along the edges) alternated
    with pointer jumping until no edge joins two labels; O(log n) rounds in practice.

    Args:
        num_nodes: number of nodes.
        i, j: int64 ``(E,)`` edge endpoints in ``[0, num_nodes)``; direction is ignored.

    Returns:
        int64 ``(num_nodes,)``: the smallest node index of each node's component.

    """
    labels = torch.arange(num_nodes, dtype=torch.int64, device=i.device)
    while i.numel() > 0:
        label_i, label_j = labels[i], labels[j]
        joining = label_i != label_j
        if not bool(joining.any()):
            break
        low = torch.minimum(label_i, label_j)[joining]
        high = torch.maximum(label_i, label_j)[joining]
        # After full pointer jumping every label is a root, so this hooks roots onto smaller
        # roots only and labels[x] <= x stays true.
        labels.scatter_reduce_(0, high, low, reduce='amin')
        while True:
            jumped = labels[labels]
            if torch.equal(jumped, labels):
                break
            labels = jumped
    return labels


def segment_mode(segment: torch.Tensor, value: torch.Tensor, num_segments: int,
                 num_values: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return the most frequent value of each segment and its count.

    Args:
        segment: int64 ``(N,)`` in ``[0, num_segments)``.
        value: int64 ``(N,)`` in ``[0, num_values)``.
        num_segments: number of segments.
        num_values: exclusive upper bound of ``value``.

    Returns:
        ``mode`` int64 ``(num_segments,)`` (ties: the smallest value; -1 for an empty
        segment) and ``count`` int64 ``(num_segments,)``.

    """
    device = segment.device
    codes, code_counts = torch.unique(segment * num_values + value, return_counts=True)
    code_segment = torch.div(codes, num_values, rounding_mode='floor')
    best_count = torch.zeros(num_segments, dtype=torch.int64, device=device)
    best_count.scatter_reduce_(0, code_segment, code_counts, reduce='amax')
    is_best = code_counts == best_count[code_segment]
    mode = torch.full((num_segments,), num_values, dtype=torch.int64, device=device)
    mode.scatter_reduce_(0, code_segment[is_best], codes[is_best] % num_values, reduce='amin')
    mode[best_count == 0] = -1
    return mode, best_count


def _sum_smallest(query_index: torch.Tensor, distance: torch.Tensor, found: torch.Tensor,
                  need: torch.Tensor, max_cells: int = 1 << 23) -> torch.Tensor:
    """Sum, per query, its ``need`` smallest distances.

    ``query_index`` int64 ``(E,)`` ascending in ``[0, Q)``; ``found`` int64 ``(Q,)`` pairs per
    query (``>= need``); rows are laid out densely (padded with inf) in blocks of about
    ``max_cells`` entries and reduced with ``topk``.
    """
    device = distance.device
    sums = torch.zeros(found.numel(), dtype=distance.dtype, device=device)
    if distance.numel() == 0:
        return sums
    run_start = torch.cumsum(found, 0) - found
    widest = int(found.max())
    block_rows = max(1, max_cells // widest)
    for begin in range(0, found.numel(), block_rows):
        end = min(begin + block_rows, found.numel())
        first, last = run_start[begin], run_start[end - 1] + found[end - 1]
        rows = query_index[first:last] - begin
        columns = torch.arange(first, last, device=device) - run_start[query_index[first:last]]
        dense = torch.full((end - begin, widest), math.inf, dtype=distance.dtype, device=device)
        dense[rows, columns] = distance[first:last]
        taken = int(need[begin:end].max())
        smallest = dense.topk(taken, dim=1, largest=False).values
        wanted = torch.arange(taken, device=device)[None, :] < need[begin:end, None]
        sums[begin:end] = torch.where(wanted, smallest, 0.0).sum(1)
    return sums


def knn_mean_distance(points: torch.Tensor, batch: torch.Tensor, k: int,
                      initial_radius: float,
                      initial_neighbors: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                      ) -> torch.Tensor:
    """Mean distance of each point to its ``k`` nearest points of the same batch (exact).

    Like Open3D's ``SearchKNN`` on a cloud that contains the query: the point itself counts
    as a neighbour at distance 0, and a batch with fewer than ``k`` points uses all of
    them. Exact by construction: a radius search is complete for every point that finds at
    least ``min(k, batch size)`` points within the radius; the others repeat with a doubled
    radius.

    Args:
        points: float ``(P, 3)``.
        batch: int64 ``(P,)`` ids >= 0.
        k: neighbours (>= 1).
        initial_radius: first search radius; pick it so most points find ``k`` neighbours.
        initial_neighbors: optional ``(query_index, distance)`` of
            ``radius_search(points, batch, points, batch, initial_radius)`` to reuse for the
            first round.

    Returns:
        ``points.dtype`` ``(P,)`` mean distances.

    """
    device = points.device
    result = torch.zeros(points.shape[0], dtype=points.dtype, device=device)
    if points.shape[0] == 0:
        return result
    if not bool(torch.isfinite(points).all()):
        raise ValueError('knn_mean_distance needs finite points')
    need = torch.bincount(batch).clamp(max=k)[batch]
    pending = torch.arange(points.shape[0], device=device)
    radius = initial_radius
    while pending.numel() > 0:
        if initial_neighbors is not None and radius == initial_radius:
            query_index, distance = initial_neighbors
        else:
            query_index, _, distance = radius_search(points[pending], batch[pending], points,
                                                     batch, radius)
        found = torch.bincount(query_index, minlength=pending.numel())
        complete = found >= need[pending]
        keep = complete[query_index]
        rows = torch.cumsum(complete, 0) - 1
        done = pending[complete]
        sums = _sum_smallest(rows[query_index[keep]], distance[keep], found[complete],
                             need[done])
        result[done] = sums / need[done].to(points.dtype)
        pending = pending[~complete]
        radius *= 2.0
    return result


def knn_initial_radius(spacing: float, k: int) -> float:
    """Radius at which a surface sampled every ``spacing`` holds about ``k`` points."""
    return spacing * max(1.0, 0.55 * math.sqrt(k))
