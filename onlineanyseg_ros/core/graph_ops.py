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
# Pointer jumps per round of connected_components on CUDA: trees up to 2**8 deep per round.
_JUMPS_PER_TEST = 8


def count_values(index: torch.Tensor, size: int) -> torch.Tensor:
    """Int64 ``(size,)`` occurrences of each value of ``index`` (int64, in ``[0, size)``).

    ``torch.bincount`` without its two host syncs on CUDA (it reads the min and max of the
    input); as fast on CPU.
    """
    counts = torch.zeros(size, dtype=torch.int64, device=index.device)
    return counts.index_add_(0, index, index.new_ones(()).expand_as(index))


def expand_segments(starts: torch.Tensor, lengths: torch.Tensor,
                    total: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Enumerate segments ``[starts[i], starts[i] + lengths[i])`` as flat int64 ``(total,)``.

    Returns ``(owner, position)``: the segment index and the position of every element.
    ``total`` must equal ``lengths.sum()``. (A binary search over the segment ends costs
    fewer kernel launches than ``repeat_interleave``.)
    """
    ends = torch.cumsum(lengths, 0)
    flat = torch.arange(total, device=starts.device)
    owner = torch.searchsorted(ends, flat, right=True)
    return owner, flat + (starts - ends + lengths)[owner]


def run_starts(sorted_values: torch.Tensor) -> torch.Tensor:
    """Bool ``(n,)``: the first entry of each run of equal values in a sorted ``(n,)``."""
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[1:] = sorted_values[1:] != sorted_values[:-1]
    return starts


def bounded_sums(values: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """``(k,)`` sums of ``values[bounds[i]:bounds[i + 1]]`` for non-decreasing ``bounds``.

    ``values`` ``(n,)`` bool, int or float (bool sums are int64); ``bounds`` int64
    ``(k + 1,)`` in ``[0, n]``. Prefix sums read at the bounds: an ``index_add_`` over
    sorted segment ids would serialize its atomics on CUDA, one address per segment. Float
    sums then differ from sums in entry order by the prefix's rounding.
    """
    prefix = torch.nn.functional.pad(torch.cumsum(values, 0), (1, 0))
    sums = prefix.index_select(0, bounds)
    return sums[1:] - sums[:-1]


def segment_sums(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Int64 ``(k,)`` sums of ``k`` consecutive segments of int64 or bool ``values`` ``(n,)``.

    Segment ``i`` holds the next ``lengths[i]`` entries (``lengths.sum() == n``), as
    ``expand_segments`` lays them out (``bounded_sums`` at the segment ends).
    """
    return bounded_sums(values, torch.nn.functional.pad(torch.cumsum(lengths, 0), (1, 0)))


def sorted_counts(sorted_values: torch.Tensor, size: int) -> torch.Tensor:
    """Int64 ``(size,)`` occurrences of each value of non-decreasing int64 values in ``[0, size)``.

    A binary search per value instead of ``count_values``: atomics of sorted values
    serialize on CUDA.
    """
    bounds = torch.searchsorted(sorted_values, torch.arange(size + 1,
                                                            device=sorted_values.device))
    return bounds[1:] - bounds[:-1]


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


def connected_components(num_nodes: int, i: torch.Tensor, j: torch.Tensor,
                         compact: Optional[bool] = None) -> torch.Tensor:
    """Label the connected components of an undirected graph.

    Min-label hooking (``scatter_reduce amin`` of labels along the edges) alternated with
    pointer jumping until a round changes nothing; O(log n) rounds in practice. Labels only
    decrease and stay inside their component, and a round that changes nothing leaves
    every label a root and both ends of every edge on one label, so each component ends on
    its smallest node. Host syncs: one convergence test per round, plus, when compacting,
    one per round that drops the edges whose ends already share a label and one per two
    pointer jumps.

    Args:
        num_nodes: number of nodes.
        i, j: int64 ``(E,)`` edge endpoints in ``[0, num_nodes)``; direction is ignored.
        compact: drop joined edges and jump to the fixed point every round; None = on the
            CPU only (fewer edges pay there; on CUDA the syncs cost more than scattering
            every edge again, and a round is a hook plus a fixed number of jumps).

    Returns:
        int64 ``(num_nodes,)``: the smallest node index of each node's component.

    """
    labels = torch.arange(num_nodes, dtype=torch.int64, device=i.device)
    if compact is None:
        compact = i.device.type != 'cuda'
    if not compact:
        while i.numel() > 0:
            before = labels
            label_i, label_j = labels.index_select(0, i), labels.index_select(0, j)
            labels = labels.scatter_reduce(0, torch.maximum(label_i, label_j),
                                           torch.minimum(label_i, label_j), reduce='amin')
            for _ in range(_JUMPS_PER_TEST):
                labels = labels.index_select(0, labels)
            if torch.equal(labels, before):
                break
        return labels
    while i.numel() > 0:
        label_i, label_j = labels.index_select(0, i), labels.index_select(0, j)
        joining = torch.nonzero(label_i != label_j).squeeze(1)
        if joining.numel() == 0:
            break
        i, j = i.index_select(0, joining), j.index_select(0, joining)
        label_i, label_j = label_i.index_select(0, joining), label_j.index_select(0, joining)
        # After full pointer jumping every label is a root, so this hooks roots onto smaller
        # roots only and labels[x] <= x stays true.
        labels.scatter_reduce_(0, torch.maximum(label_i, label_j),
                               torch.minimum(label_i, label_j), reduce='amin')
        # Two jumps per convergence test: jumping past the fixed point (every label a root)
        # changes nothing.
        while True:
            jumped = labels.index_select(0, labels)
            jumped = jumped.index_select(0, jumped)
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
    return torch.where(best_count == 0, -1, mode), best_count


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
    # Every block's pair range and widest need, read back at once (one host sync).
    begins = range(0, found.numel(), block_rows)
    block_of_query = torch.div(torch.arange(found.numel(), device=device), block_rows,
                               rounding_mode='floor')
    block_need = torch.zeros(len(begins), dtype=need.dtype, device=device).scatter_reduce_(
        0, block_of_query, need, reduce='amax')
    firsts, needs = torch.stack((run_start[::block_rows], block_need)).tolist()
    lasts = firsts[1:] + [distance.numel()]
    for begin, first, last, taken in zip(begins, firsts, lasts, needs):
        end = min(begin + block_rows, found.numel())
        rows = query_index[first:last] - begin
        columns = torch.arange(first, last, device=device) - run_start[query_index[first:last]]
        dense = torch.full((end - begin, widest), math.inf, dtype=distance.dtype, device=device)
        dense[rows, columns] = distance[first:last]
        smallest = dense.topk(taken, dim=1, largest=False).values
        wanted = torch.arange(taken, device=device)[None, :] < need[begin:end, None]
        sums[begin:end] = torch.where(wanted, smallest, 0.0).sum(1)
    return sums


def _knn_sums_exhaustive(points: torch.Tensor, batch: torch.Tensor, batch_sizes: torch.Tensor,
                         rows: torch.Tensor, need: torch.Tensor,
                         max_pairs: Optional[int] = None) -> torch.Tensor:
    """Sum, for each point ``rows[r]``, its ``need[r]`` smallest distances to its batch.

    Every point of the batch is a candidate (the point itself at distance 0), so the
    result is exact whatever the geometry, in one pass: the (row, batch point) pairs are
    enumerated in chunks of about ``max_pairs`` (``default_max_candidates``) and reduced by
    ``_sum_smallest``. ``batch_sizes``: int64 points per batch id. Host syncs: the chunk
    bounds and, per chunk, those of ``_sum_smallest``.
    """
    device = points.device
    order = torch.argsort(batch, stable=True)
    batch_start = torch.cumsum(batch_sizes, 0) - batch_sizes
    row_batch = batch.index_select(0, rows)
    lengths = batch_sizes.index_select(0, row_batch)
    starts = batch_start.index_select(0, row_batch)
    sums = torch.zeros(rows.numel(), dtype=points.dtype, device=device)
    chunks = _chunk_bounds(lengths, max_pairs or default_max_candidates(device))
    prefix = torch.cumsum(lengths, 0)
    totals = (prefix[[end - 1 for _, end in chunks]]
              - torch.nn.functional.pad(prefix, (1, 0))[[begin for begin, _ in chunks]]).tolist()
    for (begin, end), total in zip(chunks, totals):
        chunk_lengths = lengths[begin:end]
        owner, position = expand_segments(starts[begin:end], chunk_lengths, total)
        difference = (points.index_select(0, rows[begin:end].index_select(0, owner))
                      - points.index_select(0, order.index_select(0, position)))
        sums[begin:end] = _sum_smallest(owner, _squared_norm(difference).sqrt_(),
                                        chunk_lengths, need[begin:end])
    return sums


def knn_mean_distance(points: torch.Tensor, batch: torch.Tensor, k: int,
                      initial_radius: float, candidates: Optional[torch.Tensor] = None,
                      search: str = 'auto') -> torch.Tensor:
    """Mean distance of each point to its ``k`` nearest points of the same batch.

    Like Open3D's ``SearchKNN`` on a cloud that contains the query: the point itself counts
    as a neighbour at distance 0, and a batch with fewer than ``k`` points uses all of
    them (``need = min(k, batch size)``).

    With ``candidates``, a row holding ``need`` finite distances takes their mean: exact
    when the candidate set of that row held every point of the batch closer than its
    ``need``-th smallest candidate distance, otherwise an overestimate (the true
    neighbours are at most as far). Every other point is exact by construction, found by
    ``search``:

    - ``'radius'``: a radius search is complete for every point that finds at least
      ``need`` points within the radius; the others repeat with a doubled radius (about
      ten host syncs per round);
    - ``'exhaustive'``: every point of the batch is measured (``_knn_sums_exhaustive``):
      one pass and a few host syncs, at ``points x batch size`` work;
    - ``'auto'``: exhaustive on CUDA, where the few hundred to few thousand remaining
      points of a frame cost less than the syncs of the rounds; radius on the CPU.

    Args:
        points: float ``(P, 3)``, finite.
        batch: int64 ``(P,)`` ids >= 0.
        k: neighbours (>= 1).
        initial_radius: first search radius; pick it so most points find ``k`` neighbours.
        candidates: optional ``points.dtype`` ``(P, W)``, ``W <= k``: per point, the ``W``
            smallest distances to a candidate set of distinct points of its batch (itself
            included at 0), in any order, ``inf`` where the set is smaller (e.g.
            ``topk(k, largest=False, sorted=False).values`` of a wider table).
        search: ``'auto'``, ``'radius'`` or ``'exhaustive'``.

    Returns:
        ``points.dtype`` ``(P,)`` mean distances.

    """
    if search not in ('auto', 'radius', 'exhaustive'):
        raise ValueError(f"search must be 'auto', 'radius' or 'exhaustive', got {search!r}")
    device = points.device
    result = torch.zeros(points.shape[0], dtype=points.dtype, device=device)
    if points.shape[0] == 0:
        return result
    if not bool(torch.isfinite(points).all()):
        raise ValueError('knn_mean_distance needs finite points')
    batch_sizes = torch.bincount(batch)
    need = batch_sizes.clamp(max=k)[batch]
    pending = torch.arange(points.shape[0], device=device)
    if candidates is not None:
        if candidates.shape[1] > k:
            raise ValueError('knn_mean_distance takes at most k candidates per point')
        finite = torch.isfinite(candidates)
        # A row never holds more finite entries than its batch has points, so a row with
        # need = batch size < k finite entries holds the whole batch.
        enough = finite.sum(1) >= need
        sums = torch.where(finite, candidates, 0.0).sum(1)
        result = torch.where(enough, sums / need.to(points.dtype), 0.0)
        pending = torch.nonzero(~enough).squeeze(1)
    if search == 'exhaustive' or (search == 'auto' and device.type == 'cuda'):
        if pending.numel():
            pending_need = need[pending]
            sums = _knn_sums_exhaustive(points, batch, batch_sizes, pending, pending_need)
            result[pending] = sums / pending_need.to(points.dtype)
        return result
    radius = initial_radius
    while pending.numel() > 0:
        # Only the batches of pending points can hold their neighbours.
        involved = torch.bincount(batch[pending], minlength=batch_sizes.numel()) > 0
        reference = torch.nonzero(involved[batch]).squeeze(1)
        query_index, _, distance = radius_search(points[pending], batch[pending],
                                                 points[reference], batch[reference], radius)
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


def lattice_offsets(reach: int, max_gap: Optional[float] = None,
                    device: Optional[torch.device] = None) -> torch.Tensor:
    """Return the int64 ``(K, 3)`` cell offsets of the window ``[-reach, reach]^3``.

    With ``max_gap``, only offsets whose gap is at most ``max_gap`` are kept; the gap of
    offset ``o`` is the smallest distance, in cell edges, between two points of unit cells
    ``o`` apart: ``sqrt(sum(max(|o_a| - 1, 0)^2))``. Lexicographic order: the set is
    symmetric, the zero offset is the middle row and row ``K - 1 - r`` holds ``-offsets[r]``.
    """
    steps = torch.arange(-reach, reach + 1, device=device)
    offsets = torch.cartesian_prod(steps, steps, steps).reshape(-1, 3)
    if max_gap is None:
        return offsets
    gap = (offsets.abs() - 1).clamp(min=0).square().sum(1)
    return offsets[gap <= max_gap * max_gap]


def lattice_neighbors(cells: torch.Tensor, batch: torch.Tensor, num_batches: int,
                      offsets: torch.Tensor, max_table_entries: int = 1 << 24
                      ) -> torch.Tensor:
    """Find, for each occupied cell, the occupied cells of its batch at fixed offsets.

    Each batch gets its own dense box: its cells' bounding box padded by the window reach
    on every side, so that a neighbour is a fixed code offset away and never wraps into
    another row or batch. When the boxes hold at most ``max_table_entries`` cells in all,
    one int32 table over them answers every lookup by a gather; otherwise the codes are
    sorted once and looked up with ``searchsorted``. Host syncs: the box extents.

    Args:
        cells: int64 ``(N, 3)`` integer cell coordinates; (batch, cell) pairs are unique.
        batch: int64 ``(N,)`` in ``[0, num_batches)``.
        num_batches: number of batches.
        offsets: int64 ``(K, 3)`` cell offsets (e.g. ``lattice_offsets``).
        max_table_entries: largest dense table (int32 entries) before the sorted search.

    Returns:
        int32 ``(N, K)``: row of ``cells`` holding ``cells[n] + offsets[k]`` in the batch of
        ``n``, or ``N`` where no cell is there (a padding row for gathers).

    """
    device = cells.device
    num_cells = cells.shape[0]
    if num_cells == 0 or offsets.shape[0] == 0:
        return torch.full((num_cells, offsets.shape[0]), num_cells, dtype=torch.int32,
                          device=device)
    if num_cells >= (1 << 31) - 1:
        raise ValueError('lattice_neighbors supports fewer than 2^31 cells')
    reach = offsets.abs().max()  # stays on the device: the extents are the one read
    index = batch[:, None].expand(-1, 3)
    lower = torch.zeros((num_batches, 3), dtype=torch.int64, device=device).scatter_reduce_(
        0, index, cells, reduce='amin', include_self=False)
    upper = torch.zeros_like(lower).scatter_reduce_(0, index, cells, reduce='amax',
                                                    include_self=False)
    present = count_values(batch, num_batches) > 0
    extent = torch.where(present[:, None], upper - lower + 1 + 2 * reach, 0)
    total = sum(math.prod(sizes) for sizes in extent.tolist())
    if total >= _MAX_CODE:
        raise ValueError('lattice_neighbors: cells too spread out for int64 codes')
    strides = torch.stack((extent[:, 1] * extent[:, 2], extent[:, 2],
                           torch.ones_like(extent[:, 2])), dim=1)
    volume = extent.prod(1)
    base = torch.cumsum(volume, 0) - volume
    code = base[batch] + ((cells - lower[batch] + reach) * strides[batch]).sum(1)
    offset_code = (strides[:, None, :] * offsets[None, :, :]).sum(2)
    code_dtype = torch.int32 if total < 1 << 31 else torch.int64
    wanted = code.to(code_dtype)[:, None] + offset_code.to(code_dtype).index_select(0, batch)
    if total <= max_table_entries:
        table = torch.full((total,), num_cells, dtype=torch.int32, device=device)
        table[code] = torch.arange(num_cells, dtype=torch.int32, device=device)
        return table.index_select(0, wanted.reshape(-1)).reshape(wanted.shape)
    sorted_code, order = torch.sort(code.to(code_dtype))
    slot = torch.searchsorted(sorted_code, wanted).clamp_(max=num_cells - 1)
    found = sorted_code[slot] == wanted
    return torch.where(found, order.to(torch.int32)[slot], num_cells)
