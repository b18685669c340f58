from collections import Counter

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_components
from scipy.spatial import cKDTree
import torch

from onlineanyseg_ros.core.graph_ops import (_knn_sums_exhaustive, bounded_sums,
                                             connected_components, knn_mean_distance,
                                             lattice_neighbors, lattice_offsets, radius_pairs,
                                             radius_search, segment_mode, segment_sums,
                                             sorted_counts)

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def _clustered_points(seed, num_points=1500, num_batches=4):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-1, 1, (6, 3))
    points = centers[rng.integers(0, 6, num_points)] + rng.normal(0, 0.05, (num_points, 3))
    batch = rng.integers(0, num_batches, num_points)
    return points, batch


def _brute_pairs(points, batch, radius):
    distance = np.linalg.norm(points[:, None] - points[None], axis=2)
    close = (distance <= radius) & (batch[:, None] == batch[None])
    np.fill_diagonal(close, False)
    return set(zip(*np.nonzero(close)))


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('max_candidates', [1 << 22, 500])
def test_radius_pairs_match_brute_force(device, max_candidates):
    points, batch = _clustered_points(0)
    i, j = radius_pairs(torch.tensor(points, device=device), torch.tensor(batch, device=device),
                        0.04, max_candidates=max_candidates)
    found = list(zip(i.tolist(), j.tolist()))
    assert len(found) == len(set(found))
    expected = _brute_pairs(points, batch, 0.04)
    assert len(expected) > 1000
    assert set(found) == expected


def test_radius_search_query_subset_returns_distances_and_self():
    points, batch = _clustered_points(1, num_points=800)
    query = np.arange(0, 800, 7)
    q, r, distance = radius_search(torch.tensor(points[query]), torch.tensor(batch[query]),
                                   torch.tensor(points), torch.tensor(batch), 0.05)
    assert bool((q[1:] >= q[:-1]).all())
    assert set(zip(q.tolist(), r.tolist())) >= {(n, int(row)) for n, row in enumerate(query)}
    np.testing.assert_allclose(distance.numpy(),
                               np.linalg.norm(points[query[q.numpy()]] - points[r.numpy()],
                                              axis=1))
    tree = cKDTree(points)
    expected = sum(int((batch[hits] == batch[row]).sum())
                   for row, hits in zip(query, tree.query_ball_point(points[query], 0.05)))
    assert q.numel() == expected


def test_radius_search_empty_inputs():
    empty = torch.empty((0, 3))
    none = torch.empty(0, dtype=torch.int64)
    some = torch.rand(5, 3)
    for query, query_batch, reference, reference_batch in [
            (empty, none, some, torch.zeros(5, dtype=torch.int64)),
            (some, torch.zeros(5, dtype=torch.int64), empty, none)]:
        q, r, d = radius_search(query, query_batch, reference, reference_batch, 0.1)
        assert q.numel() == r.numel() == d.numel() == 0


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('compact', [None, True, False])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_connected_components_match_scipy(device, compact, seed):
    rng = np.random.default_rng(seed)
    num_nodes = 3000
    # Mostly chain-like sparse graph with many components and isolated nodes.
    i = rng.integers(0, num_nodes, 2200)
    j = np.clip(i + rng.integers(-40, 40, i.size), 0, num_nodes - 1)
    labels = connected_components(num_nodes, torch.tensor(i, device=device),
                                  torch.tensor(j, device=device), compact).cpu().numpy()
    adjacency = coo_matrix((np.ones(i.size), (i, j)), shape=(num_nodes, num_nodes))
    count, expected = scipy_components(adjacency, directed=False)
    assert len(np.unique(labels)) == count
    # Same partition, and each label is the smallest node of its component.
    smallest = np.full(count, num_nodes)
    np.minimum.at(smallest, expected, np.arange(num_nodes))
    np.testing.assert_array_equal(labels, smallest[expected])


@pytest.mark.parametrize('compact', [True, False])
def test_connected_components_of_a_long_shuffled_path(compact):
    # A path whose labels decrease along it: hooking builds one chain, deeper than the
    # jumps of one uncompacted round.
    num_nodes = 2000
    order = torch.randperm(num_nodes, generator=torch.Generator().manual_seed(4))
    labels = connected_components(num_nodes, order[:-1], order[1:], compact)
    assert labels.tolist() == [0] * num_nodes


def test_connected_components_without_edges():
    none = torch.empty(0, dtype=torch.int64)
    for compact in (True, False):
        assert connected_components(4, none, none, compact).tolist() == [0, 1, 2, 3]
        assert connected_components(0, none, none, compact).numel() == 0


def test_segment_mode_matches_counter_with_ties():
    rng = np.random.default_rng(3)
    segment = rng.integers(0, 50, 4000)
    value = rng.integers(0, 6, 4000)
    segment[segment == 7] = 8  # segment 7 stays empty
    mode, count = segment_mode(torch.tensor(segment), torch.tensor(value), 50, 6)
    for index in range(50):
        counter = Counter(value[segment == index].tolist())
        if not counter:
            assert (mode[index].item(), count[index].item()) == (-1, 0)
            continue
        best = max(counter.values())
        assert count[index].item() == best
        assert mode[index].item() == min(v for v, c in counter.items() if c == best)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('search', ['radius', 'exhaustive', 'auto'])
def test_knn_mean_distance_is_exact(device, search):
    points, batch = _clustered_points(4, num_points=1200, num_batches=5)
    # A tiny batch (fewer points than k) and far outliers that need several radius rounds.
    points = np.concatenate([points, [[5.0, 5.0, 5.0], [5.01, 5.0, 5.0], [-3.0, 2.0, 0.0]]])
    batch = np.concatenate([batch, [7, 7, 0]])
    k = 10
    result = knn_mean_distance(torch.tensor(points, device=device),
                               torch.tensor(batch, device=device), k, 0.02,
                               search=search).cpu().numpy()
    expected = np.empty(len(points))
    for index in np.unique(batch):
        rows = np.nonzero(batch == index)[0]
        distance, _ = cKDTree(points[rows]).query(points[rows], k=min(k, len(rows)))
        expected[rows] = distance.reshape(len(rows), -1).mean(1)
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-15)


def test_knn_mean_distance_rejects_non_finite_points_and_unknown_searches():
    with pytest.raises(ValueError, match='finite'):
        knn_mean_distance(torch.tensor([[0.0, 0.0, float('nan')]]),
                          torch.zeros(1, dtype=torch.int64), 3, 0.1)
    with pytest.raises(ValueError, match='search'):
        knn_mean_distance(torch.zeros((1, 3)), torch.zeros(1, dtype=torch.int64), 3, 0.1,
                          search='kdtree')


def test_lattice_offsets_window_and_gap_filter():
    full = lattice_offsets(2)
    assert full.shape == (125, 3)
    assert full[62].tolist() == [0, 0, 0]
    assert torch.equal(full.flip(0), -full)
    # Gap <= 1: at most one coordinate of magnitude 2 (27 + 3 * 2 * 9 offsets).
    window = lattice_offsets(2, 1.2)
    assert window.shape == (81, 3)
    assert int(((window.abs() == 2).sum(1) <= 1).sum()) == 81
    assert torch.equal(window.flip(0), -window)
    assert lattice_offsets(2, 0.0).shape == (27, 3)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('max_table_entries', [1 << 24, 0])
def test_lattice_neighbors_match_dictionary_lookup(device, max_table_entries):
    rng = np.random.default_rng(5)
    cells = rng.integers(-6, 6, (900, 3))
    batch = rng.integers(0, 3, 900)
    cells[batch == 2] += 1000  # a far batch: its own box
    _, first = np.unique(np.column_stack([batch, cells]), axis=0, return_index=True)
    cells, batch = cells[first], batch[first]
    offsets = lattice_offsets(2, 1.0)
    found = lattice_neighbors(torch.tensor(cells, device=device),
                              torch.tensor(batch, device=device), 4,
                              offsets.to(device), max_table_entries).cpu().numpy()
    row_of = {(b, *cell): row for row, (b, cell) in enumerate(zip(batch, map(tuple, cells)))}
    expected = np.array([[row_of.get((b, *(cell + offset)), len(cells))
                          for offset in offsets.numpy()] for b, cell in zip(batch, cells)])
    np.testing.assert_array_equal(found, expected)
    assert (found < len(cells)).sum() > len(cells)  # neighbours were found


@pytest.mark.parametrize('max_pairs', [1, 700, 1 << 20])
def test_exhaustive_knn_sums_in_chunks(max_pairs):
    points, batch = _clustered_points(2, num_points=300, num_batches=4)
    rows = torch.tensor([0, 5, 17, 120, 299])
    need = torch.tensor([1, 3, 7, 7, 2])
    sizes = torch.bincount(torch.tensor(batch))
    sums = _knn_sums_exhaustive(torch.tensor(points), torch.tensor(batch), sizes, rows, need,
                                max_pairs)
    for row, taken, value in zip(rows.tolist(), need.tolist(), sums.tolist()):
        same = points[batch == batch[row]]
        distances = np.sort(np.linalg.norm(same - points[row], axis=1))
        assert value == pytest.approx(distances[:taken].sum(), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize('search', ['radius', 'exhaustive'])
def test_knn_mean_distance_with_candidates(search):
    points, batch = _clustered_points(6, num_points=600, num_batches=3)
    points = np.concatenate([points, [[5.0, 5.0, 5.0], [5.01, 5.0, 5.0]]])
    batch = np.concatenate([batch, [7, 7]])
    k = 10
    points_t, batch_t = torch.tensor(points), torch.tensor(batch)
    exact = knn_mean_distance(points_t, batch_t, k, 0.02, search=search)
    distance = np.linalg.norm(points[:, None] - points[None], axis=2)
    distance[batch[:, None] != batch[None]] = np.inf
    nearest = torch.tensor(distance).topk(k, dim=1, largest=False, sorted=False).values
    # Complete candidate sets give the exact result; too few candidates (every other row
    # keeps only 3) fall back to the exact search.
    full = knn_mean_distance(points_t, batch_t, k, 0.02, nearest, search=search)
    torch.testing.assert_close(full, exact, rtol=1e-12, atol=1e-15)
    partial = nearest.clone()
    partial[::2, 3:] = np.inf
    mixed = knn_mean_distance(points_t, batch_t, k, 0.02, partial, search=search)
    torch.testing.assert_close(mixed, exact, rtol=1e-12, atol=1e-15)
    # Candidates missing a true neighbour overestimate.
    missing = torch.tensor(np.sort(distance, axis=1)[:, 1:k + 1])
    missing[:, 0] = 0.0
    assert bool((knn_mean_distance(torch.tensor(points), torch.tensor(batch), k, 0.02,
                                   missing, search=search)[:-2] > exact[:-2]).all())
    with pytest.raises(ValueError, match='at most k'):
        knn_mean_distance(torch.tensor(points), torch.tensor(batch), 3, 0.02, nearest)


@pytest.mark.parametrize('device', DEVICES)
def test_segment_sums_and_sorted_counts_match_scatter_adds(device):
    rng = np.random.default_rng(3)
    # Empty segments at the start, in the middle and at the end.
    lengths = torch.tensor([0, 3, 1, 0, 0, 7, 2, 0], device=device)
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
    values = torch.as_tensor(rng.integers(-5, 9, owner.numel()), device=device)
    expected = torch.zeros(lengths.numel(), dtype=torch.int64,
                           device=device).index_add_(0, owner, values)
    assert torch.equal(segment_sums(values, lengths), expected)
    flags = values > 0
    assert torch.equal(segment_sums(flags, lengths),
                       torch.zeros_like(expected).index_add_(0, owner, flags.long()))
    assert torch.equal(sorted_counts(owner, lengths.numel()), lengths)
    assert torch.equal(sorted_counts(owner, lengths.numel() + 2),
                       torch.cat((lengths, lengths.new_zeros(2))))
    # Bounds that skip entries (padding) before the first and after the last range.
    real = torch.as_tensor(rng.random(owner.numel()), device=device)
    padded = torch.cat((real.new_full((2,), 7.0), real, real.new_full((3,), 9.0)))
    bounds = 2 + torch.nn.functional.pad(torch.cumsum(lengths, 0), (1, 0))
    torch.testing.assert_close(bounded_sums(padded, bounds),
                               real.new_zeros(lengths.numel()).index_add_(0, owner, real))
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    assert torch.equal(segment_sums(empty, torch.zeros(2, dtype=torch.int64, device=device)),
                       torch.zeros(2, dtype=torch.int64, device=device))
