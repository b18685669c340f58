"""Lifting and geometry against naive references (Open3D semantics); lifting_graph against it."""

from collections import Counter
import dataclasses

import numpy as np
import pytest
from scipy.spatial import cKDTree
import torch

from onlineanyseg_ros.core import lifting_graph
from onlineanyseg_ros.core.config import SegmenterConfig
from onlineanyseg_ros.core.geometry import backproject, camera_center, transform_points
from onlineanyseg_ros.core.graph_ops import lattice_offsets, radius_pairs
from onlineanyseg_ros.core.lifting import (_denoise, _forward_window, associate_voxels,
                                           dbscan_largest_label, DROP_REASONS, lift_masks,
                                           statistical_inliers, voxel_downsample)
from onlineanyseg_ros.core.lifting_graph import (Capacities, GraphLifter, lift_padded,
                                                 STATUS_FIELDS, supports)
from onlineanyseg_ros.core.voxel_hash import unpack_keys

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
CONFIG = SegmenterConfig()


# ---------------------------------------------------------------- naive references


def reference_downsample(points, voxel_size):
    """Open3D voxel_down_sample: grid anchored at min bound - voxel/2, mean per cell."""
    anchor = points.min(0) - 0.5 * voxel_size
    cells = np.floor((points - anchor) / voxel_size).astype(np.int64)
    groups = {}
    for cell, point in zip(map(tuple, cells), points):
        groups.setdefault(cell, []).append(point)
    return np.array([np.mean(groups[cell], axis=0) for cell in sorted(groups)])


def reference_dbscan(points, eps, min_points):
    """Open3D cluster_dbscan, transcribed sequentially."""
    neighbors = cKDTree(points).query_ball_point(points, eps)
    labels = [-2] * len(points)
    cluster = 0
    for index in range(len(points)):
        if labels[index] != -2:
            continue
        if len(neighbors[index]) < min_points:
            labels[index] = -1
            continue
        labels[index] = cluster
        to_visit, visited = set(neighbors[index]), {index}
        while to_visit:
            neighbor = to_visit.pop()
            visited.add(neighbor)
            if labels[neighbor] == -1:
                labels[neighbor] = cluster
            if labels[neighbor] != -2:
                continue
            labels[neighbor] = cluster
            if len(neighbors[neighbor]) >= min_points:
                to_visit.update(q for q in neighbors[neighbor] if q not in visited)
        cluster += 1
    return np.array(labels)


def reference_keep_largest(points, eps, min_points):
    """Keep argmax(bincount(labels + 1)), as the reference's denoise() does."""
    labels = reference_dbscan(points, eps, min_points) + 1
    return labels == np.argmax(np.bincount(labels))


def reference_statistical_inliers(points, neighbors, std_ratio):
    """Open3D remove_statistical_outlier."""
    count = len(points)
    distance, _ = cKDTree(points).query(points, k=min(neighbors, count))
    mean = distance.reshape(count, -1).mean(1)
    cloud_mean = mean[mean > 0].sum() / count
    squares = ((mean[mean > 0] - cloud_mean) ** 2).sum()
    with np.errstate(divide='ignore', invalid='ignore'):
        threshold = cloud_mean + std_ratio * np.sqrt(squares / (count - 1))
    return (mean > 0) & (mean < threshold)


def reference_associate(points, voxel_size, radius):
    """Brute force: every lattice point within radius of each point."""
    voxels, covered = set(), 0
    for point in points:
        low = np.floor((point - radius) / voxel_size).astype(int) - 1
        high = np.floor((point + radius) / voxel_size).astype(int) + 1
        grid = np.stack(np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(low, high)],
                                    indexing='ij'), -1).reshape(-1, 3)
        hits = grid[(((grid * voxel_size) - point) ** 2).sum(1) <= radius * radius]
        covered += len(hits) > 0
        voxels.update(map(tuple, hits))
    return voxels, covered / len(points)


def reference_lift(points, valid, labels, config):
    """Method.md 3.3 + 3.4, mask by mask."""
    dropped = Counter()
    lifted = {}
    for label in sorted(set(labels[labels >= 1].tolist())):
        mask_points = points[(labels == label) & valid]
        if len(mask_points) < config.min_mask_pixels:
            dropped['few_pixels'] += 1
            continue
        cells = reference_downsample(mask_points, config.voxel_size_m)
        cells = cells[reference_keep_largest(cells, config.query_radius_m,
                                             config.denoise_min_neighbors)]
        cells = cells[reference_statistical_inliers(cells, config.outlier_neighbors,
                                                    config.outlier_std_ratio)]
        if len(cells) < config.min_mask_points:
            dropped['few_points'] += 1
            continue
        voxels, coverage = reference_associate(cells, config.voxel_size_m,
                                               config.query_radius_m)
        if coverage < config.coverage_min:
            dropped['low_coverage'] += 1
        elif len(voxels) < config.min_mask_points:
            dropped['few_voxels'] += 1
        else:
            lifted[label] = voxels
    uses = Counter(voxel for voxels in lifted.values() for voxel in voxels)
    boundary = {voxel for voxel, count in uses.items() if count >= 2}
    accepted = {label: voxels - boundary for label, voxels in lifted.items()
                if len(voxels - boundary) > config.min_voxels_after_boundary}
    dropped['boundary'] = len(lifted) - len(accepted)
    observed = set().union(*lifted.values()) if lifted else set()
    return accepted, observed, {reason: dropped[reason] for reason in DROP_REASONS}


# ---------------------------------------------------------------- synthetic frames


def synthetic_frame(seed=0, height=90, width=120, spacing=0.006):
    """Two planes split into adjacent masks, noise pixels, a sparse mask and a tiny mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    points = np.stack([cols * spacing, rows * spacing, np.full(rows.shape, 1.5)], -1)
    points[:, 60:, 2] += 0.25 + 0.1 * cols[:, 60:] * spacing  # a tilted second plane
    points += rng.normal(0, 0.001, points.shape)
    labels = np.zeros((height, width), np.int32)
    labels[:, :30] = 1
    labels[:, 30:60] = 2
    labels[:60, 60:] = 4
    labels[60:, 60:90] = 6
    labels[60:, 90:] = 9  # two masks meeting along a diagonal-free straight border
    flying = rng.random((height, width)) < 0.02  # flying pixels far from the surfaces
    points[flying] += rng.uniform(-0.3, 0.3, (int(flying.sum()), 3))
    valid = rng.random((height, width)) > 0.03
    # Mask 12: 600 pixels scattered in a 1 m cube: mostly DBSCAN noise, which is kept.
    sparse = np.zeros((height, width), bool)
    sparse.reshape(-1)[rng.choice(height * width, 600, replace=False)] = True
    labels[sparse] = 12
    points[sparse] = rng.uniform(0.0, 1.0, (600, 3)) + [0.2, 0.2, 2.5]
    # Mask 14: 450 pixels on a 7 cm square: too few cells. Mask 15: too few pixels.
    labels[70:85, :30] = 14
    points[70:85, :30] = np.concatenate([rng.uniform(0, 0.07, (15, 30, 2)),
                                         np.full((15, 30, 1), 0.9)], -1)
    labels[5:15, 5:25] = 15
    return points, valid, labels


def _as_sets(frame):
    keys = unpack_keys(frame.mask_keys).cpu().numpy()
    offsets = frame.mask_offsets.tolist()
    return {label: set(map(tuple, keys[offsets[m]:offsets[m + 1]]))
            for m, label in enumerate(frame.labels.tolist())}


def _lift(points, valid, labels, config, device='cpu', dtype=torch.float64):
    return lift_masks(torch.tensor(points, dtype=dtype, device=device),
                      torch.tensor(valid, device=device), torch.tensor(labels, device=device),
                      config)


# ---------------------------------------------------------------- geometry


def test_backproject_matches_pinhole_formula_and_validity():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.05, 6.0, (6, 8)).astype(np.float32)
    depth[0, 0], depth[0, 1] = np.nan, 0.0
    K = np.array([[500.0, 0, 3.7], [0, 480.0, 2.4], [0, 0, 1]])
    angle = 0.3
    T = np.eye(4)
    T[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                 [0, 0, 1]]
    T[:3, 3] = [1.0, -2.0, 0.5]
    points, valid = backproject(depth, K, T, near=0.1, far=5.0)
    assert points.dtype == torch.float32 and points.shape == (6, 8, 3)
    v, u = np.mgrid[0:6, 0:8]
    z = depth.astype(np.float64)
    camera = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1)
    expected = camera @ T[:3, :3].T + T[:3, 3]
    expected_valid = np.isfinite(z) & (z > 0.1) & (z < 5.0)
    np.testing.assert_array_equal(valid.numpy(), expected_valid)
    np.testing.assert_allclose(points.numpy()[expected_valid], expected[expected_valid],
                               atol=1e-5)
    assert bool((points[~valid] == 0).all())
    np.testing.assert_allclose(camera_center(T, torch.device('cpu')).numpy(), T[:3, 3])
    np.testing.assert_allclose(
        transform_points(np.linalg.inv(T), torch.tensor(expected)).numpy(), camera,
        atol=1e-12)


# ---------------------------------------------------------------- stages


def test_voxel_downsample_matches_open3d_convention():
    rng = np.random.default_rng(1)
    points = [rng.normal(center, 0.05, (300, 3)) for center in ([0, 0, 0], [1, -1, 2])]
    cells, cell_mask, cell_ijk = voxel_downsample(
        torch.tensor(np.concatenate(points)), torch.repeat_interleave(torch.arange(2), 300),
        2, 0.025)
    # One mean per (mask, cell), inside its cell of the grid anchored at min - voxel / 2.
    assert torch.unique(torch.column_stack([cell_mask, cell_ijk]), dim=0).shape[0] == len(cells)
    for mask, mask_points in enumerate(points):
        anchor = mask_points.min(0) - 0.0125
        rows = (cell_mask == mask).numpy()
        local = (cells.numpy()[rows] - anchor) / 0.025 - cell_ijk.numpy()[rows]
        assert local.min() >= -1e-9 and local.max() <= 1 + 1e-9
    for mask, mask_points in enumerate(points):
        expected = reference_downsample(mask_points, 0.025)
        got = cells[cell_mask == mask].numpy()
        assert len(got) == len(expected)
        np.testing.assert_allclose(got[np.lexsort(got.T)], expected[np.lexsort(expected.T)],
                                   atol=1e-12)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_dbscan_largest_label_matches_sequential_open3d(device, seed):
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(6):
        blobs = [rng.normal(rng.uniform(-0.3, 0.3, 3), rng.uniform(0.01, 0.04),
                            (rng.integers(5, 60), 3)) for _ in range(rng.integers(1, 4))]
        noise = rng.uniform(-0.5, 0.5, (rng.integers(0, 40), 3))
        batch_points = np.concatenate(blobs + [noise])
        batches.append(batch_points[rng.permutation(len(batch_points))])
    points = torch.tensor(np.concatenate(batches), device=device)
    batch = torch.repeat_interleave(torch.arange(6), torch.tensor([len(b) for b in batches]))
    batch = batch.to(device)
    i, j = radius_pairs(points, batch, 0.03)
    keep = dbscan_largest_label(batch, 6, i, j, 4).cpu().numpy()
    start = 0
    for batch_points in batches:
        expected = reference_keep_largest(batch_points, 0.03, 4)
        np.testing.assert_array_equal(keep[start:start + len(batch_points)], expected)
        start += len(batch_points)


def test_dbscan_ties_noise_and_border_points():
    line = np.arange(6)[:, None] * [0.005, 0.0, 0.0]
    # Batch 0: two equal clusters; the one holding the lowest core index wins.
    first, second = line + [1.0, 0, 0], line
    tie = np.concatenate([first, second])
    # Batch 1: mostly noise, which the reference keeps.
    noise = np.concatenate([line[:4] + [0, 0.5, 0],
                            np.arange(9)[:, None] * [0.1, 0.0, 0.0] + [0, 1.0, 0]])
    # Batch 2: a border point between two clusters joins the earlier-created one.
    cluster_a = line
    cluster_b = line + [0.069, 0.0, 0.0]
    border = np.array([[0.047, 0.0, 0.0]])
    bridge = np.concatenate([cluster_b, border, cluster_a])
    points = np.concatenate([tie, noise, bridge])
    batch = torch.tensor([0] * len(tie) + [1] * len(noise) + [2] * len(bridge))
    i, j = radius_pairs(torch.tensor(points), batch, 0.025)
    keep = dbscan_largest_label(batch, 3, i, j, 4).numpy()
    offsets = np.cumsum([0, len(tie), len(noise), len(bridge)])
    for index, part in enumerate((tie, noise, bridge)):
        expected = reference_keep_largest(part, 0.025, 4)
        np.testing.assert_array_equal(keep[offsets[index]:offsets[index + 1]], expected)
    assert keep[:6].all() and not keep[6:12].any()
    assert keep[offsets[1]:offsets[2]].sum() == 9
    # The border point reaches both clusters; B holds the lowest core index, so it is
    # created first, takes the border point and wins 7 to 6.
    assert keep[offsets[2]:offsets[2] + 7].all() and not keep[offsets[2] + 7:].any()


@pytest.mark.parametrize('device', DEVICES)
def test_statistical_inliers_match_open3d(device):
    rng = np.random.default_rng(3)
    sizes = [400, 150, 12, 1]
    parts = []
    for size in sizes:
        plane = np.concatenate([rng.uniform(0, 0.5, (size, 2)), rng.normal(0, 0.002,
                                                                           (size, 1))], 1)
        outliers = rng.random(size) < 0.05
        plane[outliers, 2] += rng.uniform(0.05, 0.2, int(outliers.sum()))
        parts.append(plane)
    points = torch.tensor(np.concatenate(parts), device=device)
    batch = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes)).to(device)
    keep = statistical_inliers(points, batch, 4, 20, 2.0, 0.02).cpu().numpy()
    expected = np.concatenate([reference_statistical_inliers(part, 20, 2.0) for part in parts])
    np.testing.assert_array_equal(keep, expected)
    assert not keep[-1]  # a single point is never kept (Open3D divides by n - 1 = 0)
    assert statistical_inliers(points, batch, 4, 0, 2.0, 0.02).all()


@pytest.mark.parametrize('radius', [0.03, 0.011, 0.05])
def test_associate_voxels_matches_brute_force(radius):
    rng = np.random.default_rng(4)
    parts = [rng.uniform(-0.1, 0.1, (80, 3)), rng.uniform(0.0, 0.2, (50, 3))]
    pair_batch, pair_key, coverage = associate_voxels(
        torch.tensor(np.concatenate(parts)), torch.repeat_interleave(torch.arange(3),
                                                                     torch.tensor([80, 50, 0])),
        3, 0.025, radius)
    assert bool((pair_batch[1:] >= pair_batch[:-1]).all())
    keys = unpack_keys(pair_key).numpy()
    for index, part in enumerate(parts):
        expected, expected_coverage = reference_associate(part, 0.025, radius)
        rows = (pair_batch == index).numpy()
        assert set(map(tuple, keys[rows])) == expected
        assert len(keys[rows]) == len(expected)
        assert coverage[index].item() == pytest.approx(expected_coverage)
        assert bool((pair_key[rows][1:] > pair_key[rows][:-1]).all())
    assert torch.isnan(coverage[2])


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize('device', DEVICES)
def test_lift_masks_matches_reference_pipeline(device):
    points, valid, labels = synthetic_frame()
    frame = _lift(points, valid, labels, CONFIG, device)
    accepted, observed, dropped = reference_lift(points, valid, labels, CONFIG)
    assert frame.labels.tolist() == sorted(accepted)
    assert sorted(accepted) == [1, 2, 4, 6, 9, 12]
    assert frame.dropped == dropped
    assert dropped['few_pixels'] == 1 and dropped['few_points'] == 1  # masks 15 and 14
    assert _as_sets(frame) == accepted
    assert set(map(tuple, unpack_keys(frame.observed_keys).cpu().numpy())) == observed
    assert bool((frame.observed_keys[1:] > frame.observed_keys[:-1]).all())
    sizes = (frame.mask_offsets[1:] - frame.mask_offsets[:-1]).tolist()
    assert sizes == [len(accepted[label]) for label in frame.labels.tolist()]
    assert torch.equal(frame.mask_keys[frame.mask_index == 1],
                       frame.mask_keys[sizes[0]:sizes[0] + sizes[1]])
    # Masks of one frame never share a voxel after boundary removal.
    assert torch.unique(frame.mask_keys).numel() == frame.mask_keys.numel()


def test_float32_and_float64_inputs_give_identical_results():
    points, valid, labels = synthetic_frame(seed=1)
    points = points.astype(np.float32)
    single = _lift(points, valid, labels, CONFIG, dtype=torch.float32)
    double = _lift(points.astype(np.float64), valid, labels, CONFIG, dtype=torch.float64)
    for name in ('labels', 'observed_keys', 'mask_keys', 'mask_offsets'):
        assert torch.equal(getattr(single, name), getattr(double, name)), name
    assert single.dropped == double.dropped
    assert single.num_masks > 0


def test_huge_and_negative_label_ids_lift_like_small_ones():
    points, valid, labels = synthetic_frame(seed=2)
    small = _lift(points, valid, labels, CONFIG)
    # Ids past the dense lookup table take the sorted path; negative ids mean no mask.
    huge = np.where(labels > 0, labels.astype(np.int64) << 30, -7)
    large = _lift(points, valid, huge, CONFIG)
    assert large.labels.tolist() == [label << 30 for label in small.labels.tolist()]
    for name in ('observed_keys', 'mask_keys', 'mask_offsets'):
        assert torch.equal(getattr(large, name), getattr(small, name))
    assert large.dropped == small.dropped and small.num_masks >= 4


def test_boundary_removal_edge_at_min_voxels_after_boundary():
    points, valid, labels = synthetic_frame(seed=2)
    loose = dataclasses.replace(CONFIG, min_voxels_after_boundary=0)
    frame = _lift(points, valid, labels, loose)
    sizes = dict(zip(frame.labels.tolist(),
                     (frame.mask_offsets[1:] - frame.mask_offsets[:-1]).tolist()))
    smallest = min(sizes.values())
    at_edge = _lift(points, valid, labels,
                    dataclasses.replace(CONFIG, min_voxels_after_boundary=smallest - 1))
    assert at_edge.labels.tolist() == frame.labels.tolist()
    past_edge = _lift(points, valid, labels,
                      dataclasses.replace(CONFIG, min_voxels_after_boundary=smallest))
    assert past_edge.labels.tolist() == [label for label, size in sizes.items()
                                         if size > smallest]
    assert past_edge.dropped['boundary'] == sum(size == smallest for size in sizes.values())
    # Dropping a mask does not give its boundary voxels back to its neighbours.
    for label, voxels in _as_sets(past_edge).items():
        assert voxels == _as_sets(frame)[label]


def _pixel_grid_frame(valid_pixels):
    """One flat 20 x 20 pixel mask at 1.25 cm spacing with ``valid_pixels`` valid pixels."""
    rows, cols = np.mgrid[0:20, 0:20]
    points = np.stack([cols * 0.0125, rows * 0.0125, np.full(rows.shape, 1.0)], -1)
    # Jitter keeps points off cell borders and distances free of exact ties.
    points += np.random.default_rng(6).normal(0, 1e-4, points.shape)
    valid = np.zeros(400, bool)
    valid[:valid_pixels] = True
    return points, valid.reshape(20, 20), np.ones((20, 20), np.int32)


def test_pixel_threshold_edge_399_vs_400():
    kept = _lift(*_pixel_grid_frame(400), CONFIG)
    assert kept.labels.tolist() == [1]
    assert kept.dropped == dict.fromkeys(DROP_REASONS, 0)
    dropped = _lift(*_pixel_grid_frame(399), CONFIG)
    assert dropped.num_masks == 0 and dropped.dropped['few_pixels'] == 1


def test_point_and_coverage_threshold_edges():
    points, valid, labels = _pixel_grid_frame(400)
    cells = reference_downsample(points.reshape(-1, 3), CONFIG.voxel_size_m)
    cells = cells[reference_statistical_inliers(cells, 20, 2.0)]  # DBSCAN keeps every cell
    count = len(cells)
    assert _lift(points, valid, labels,
                 dataclasses.replace(CONFIG, min_mask_points=count)).num_masks == 1
    too_few = _lift(points, valid, labels,
                    dataclasses.replace(CONFIG, min_mask_points=count + 1))
    assert too_few.num_masks == 0 and too_few.dropped['few_points'] == 1
    # A small radius leaves part of the cells without a lattice point in range; no core
    # points and no outlier filter keep every cell (the noise label is the largest).
    small = dataclasses.replace(CONFIG, query_radius_m=0.008, min_voxels_after_boundary=0,
                                denoise_min_neighbors=100, outlier_neighbors=0)
    cells = reference_downsample(points.reshape(-1, 3), CONFIG.voxel_size_m)
    _, coverage = reference_associate(cells, small.voxel_size_m, small.query_radius_m)
    assert 0 < coverage < 1
    assert _lift(points, valid, labels,
                 dataclasses.replace(small, coverage_min=coverage)).num_masks == 1
    low = _lift(points, valid, labels,
                dataclasses.replace(small, coverage_min=coverage + 1e-9))
    assert low.num_masks == 0 and low.dropped['low_coverage'] == 1


@pytest.mark.parametrize('case', ['invalid_depth', 'no_labels', 'empty_image'])
def test_empty_inputs_give_an_empty_frame(case):
    points, valid, labels = synthetic_frame(seed=3)
    expected = dict.fromkeys(DROP_REASONS, 0)
    if case == 'invalid_depth':
        valid = np.zeros_like(valid)
        expected['few_pixels'] = len(np.unique(labels[labels > 0]))
    elif case == 'no_labels':
        labels = np.zeros_like(labels)
    else:
        points, valid, labels = points[:0], valid[:0], labels[:0]
    frame = _lift(points, valid, labels, CONFIG)
    assert frame.num_masks == 0 and frame.mask_keys.numel() == 0
    assert frame.observed_keys.numel() == 0 and frame.mask_offsets.tolist() == [0]
    assert frame.dropped == expected


def test_all_masks_denoised_away():
    rng = np.random.default_rng(5)
    # 900 pixels on a 6 cm square: at most 16 cells, fewer than min_mask_points.
    points = np.concatenate([rng.uniform(0, 0.06, (30, 30, 2)), np.ones((30, 30, 1))], -1)
    frame = _lift(points, np.ones((30, 30), bool), np.ones((30, 30), np.int32), CONFIG)
    assert frame.num_masks == 0 and frame.dropped['few_points'] == 1
    assert frame.observed_keys.numel() == 0


# ---------------------------------------------------------------- window approximation


def surface_cells(seed=7, config=CONFIG):
    """Downsampled cells of four noisy tilted / curved surface masks, as in a room."""
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.linspace(0, 1.2, 150), np.linspace(0, 0.9, 110))
    u, v = u.reshape(-1), v.reshape(-1)
    surfaces = [np.column_stack([u, v, 0.3 * u + 0.1 * v]),
                np.column_stack([u, 0.2 + 0.05 * np.sin(6 * u), v]) + [1.5, 0, 0],
                np.column_stack([0.4 * np.cos(2 * u), 0.4 * np.sin(2 * u), v]) + [0, 2, 0],
                np.column_stack([u, v, 0.7 * v]) + [3, 0, 0]]
    points = np.concatenate(surfaces) + rng.normal(0, 0.003, (len(u) * 4, 3))
    flying = rng.random(len(points)) < 0.01
    points[flying] += rng.uniform(-0.2, 0.2, (int(flying.sum()), 3))
    mask = torch.repeat_interleave(torch.arange(4), len(u))
    return voxel_downsample(torch.tensor(points), mask, 4, config.voxel_size_m)


def test_window_pairs_are_the_exact_dbscan_neighbourhoods():
    cells, cell_mask, cell_ijk = surface_cells()
    offsets = lattice_offsets(2, CONFIG.query_radius_m / CONFIG.voxel_size_m)
    neighbor, squared = _forward_window(cells, cell_mask, cell_ijk, 4, offsets[41:])
    cell, column = torch.nonzero(squared <= CONFIG.query_radius_m ** 2).unbind(1)
    window = set(zip(cell.tolist(), neighbor[cell, column].tolist()))
    i, j = radius_pairs(cells, cell_mask, CONFIG.query_radius_m)
    exact = {(a, b) for a, b in zip(i.tolist(), j.tolist()) if a < b}
    assert {(min(a, b), max(a, b)) for a, b in window} == exact
    assert len(exact) > 2 * len(cells)


def test_denoise_agrees_with_exact_knn_on_surfaces():
    cells, cell_mask, cell_ijk = surface_cells()
    kept, kept_mask = _denoise(cells, cell_mask, cell_ijk, 4, CONFIG)
    # The exact pipeline: radius-search DBSCAN and exact kNN outlier removal.
    i, j = radius_pairs(cells, cell_mask, CONFIG.query_radius_m)
    keep = dbscan_largest_label(cell_mask, 4, i, j, CONFIG.denoise_min_neighbors)
    inliers = statistical_inliers(cells[keep], cell_mask[keep], 4, CONFIG.outlier_neighbors,
                                  CONFIG.outlier_std_ratio, 0.06)
    exact = {tuple(row) for row in cells[keep][inliers].tolist()}
    window = {tuple(row) for row in kept.tolist()}
    assert len(exact) > 5000 and 0 < len(cells) - len(exact)
    assert len(exact ^ window) <= 0.01 * len(exact)
    assert torch.equal(torch.bincount(kept_mask, minlength=4) > 0, torch.ones(4, dtype=bool))


# ---------------------------------------------------------------- fixed-size lifting (CUDA graphs)

SMALL = Capacities(cells=512, edges=256, pending=16, pairs=1024, far=2, far_pairs=64,
                   hits=512, observed_keys=256)
ROOMY = Capacities(cells=1 << 13, edges=1 << 16, pending=1 << 10, pairs=1 << 20, far=1 << 10,
                   far_pairs=1 << 18, hits=1 << 16, observed_keys=1 << 16)


def _tensors(points, valid, labels, device='cpu'):
    return (torch.tensor(points, dtype=torch.float32, device=device),
            torch.tensor(valid, device=device), torch.tensor(labels, device=device))


def assert_same_frame(got, expected):
    for name in ('labels', 'observed_keys', 'mask_keys', 'mask_offsets'):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    assert got.dropped == expected.dropped


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_padded_lifting_equals_lift_masks_and_grows_its_capacities(seed):
    inputs = _tensors(*synthetic_frame(seed=seed))
    lifter = GraphLifter(CONFIG, torch.device('cpu'), SMALL)
    frame = lifter(*inputs)
    expected = lift_masks(*inputs, CONFIG)
    assert_same_frame(frame, expected)
    assert expected.num_masks >= 4
    # Every capacity was too small for the frame: each one grew, with headroom.
    assert lifter.stats['regrowths'] >= 1 and lifter.stats['fallbacks'] == 0
    assert all(grown > small for grown, small in zip(lifter.capacities, SMALL))
    status = dict(zip(STATUS_FIELDS, lift_padded(*inputs, CONFIG, lifter.capacities)
                      .status.tolist()))
    assert status['cells'] <= lifter.capacities.cells < 2 * 1.25 * status['cells']
    # Both exact kNN tiers ran: columns, and whole masks for the sparse mask's cells.
    assert status['pending'] > status['far'] > 0
    # The next frame fits: no regrowth.
    regrowths = lifter.stats['regrowths']
    assert_same_frame(lifter(*inputs), expected)
    assert lifter.stats['regrowths'] == regrowths


def test_padded_segment_mode_matches_counter_with_ties_and_dead_entries():
    rng = np.random.default_rng(5)
    segment = rng.integers(0, 40, 5000)
    value = rng.integers(0, 7, 5000)
    live = rng.random(5000) < 0.8
    live[segment == 3] = False  # segment 3 has entries, none of them live
    segment[segment == 9] = 10  # segment 9 has none
    mode = lifting_graph._segment_mode(torch.tensor(segment), torch.tensor(value),
                                       torch.tensor(live), 40, 7)
    for index in range(40):
        counter = Counter(value[(segment == index) & live].tolist())
        if not counter:
            assert mode[index].item() == 7
            continue
        best = max(counter.values())
        assert mode[index].item() == min(v for v, c in counter.items() if c == best)


def test_capacities_shrink_after_a_window_of_smaller_frames():
    inputs = _tensors(*synthetic_frame(seed=0))
    expected = lift_masks(*inputs, CONFIG)
    roomy = ROOMY._replace(far_pairs=1 << 20)
    needs = dict(zip(STATUS_FIELDS, lift_padded(*inputs, CONFIG, roomy).status.tolist()))
    lifter = GraphLifter(CONFIG, torch.device('cpu'), roomy, shrink_window=3)
    for _ in range(2):
        assert_same_frame(lifter(*inputs), expected)
    assert lifter.capacities == roomy and lifter.stats['shrinks'] == 0
    # The window is full: every capacity over twice the frame's needs (with headroom)
    # shrinks to them; the others stay.
    assert_same_frame(lifter(*inputs), expected)
    assert lifter.stats['shrinks'] == 1
    for name, given, shrunk in zip(Capacities._fields, roomy, lifter.capacities):
        needed = max(needs[name], 1)
        if given > 2 * 1.4 * needed:
            assert needed * 1.25 <= shrunk <= needed * 1.4, name
        else:
            assert shrunk == given, name
    assert lifter.capacities.pairs < roomy.pairs and lifter.capacities.cells < roomy.cells
    # The shrunk capacities hold the frame: no regrowth, no second shrink, same result.
    for _ in range(4):
        assert_same_frame(lifter(*inputs), expected)
    assert lifter.stats['regrowths'] == 0 and lifter.stats['shrinks'] == 1


def test_pending_lift_exposes_observed_keys_only_when_complete():
    inputs = _tensors(*synthetic_frame(seed=1))
    expected = lift_masks(*inputs, CONFIG)
    # Too small: the launched outputs are incomplete, nothing of them counts as observed,
    # and the result is rerun with grown capacities.
    small = GraphLifter(CONFIG, torch.device('cpu'), SMALL)
    pending = small.launch(*inputs)
    _, valid, status = pending.observed()
    assert not valid.any()
    assert_same_frame(pending.result(status.tolist()), expected)
    assert not pending.launched and small.stats['regrowths'] >= 1
    # Large enough (the grown capacities): the observed keys are the frame's.
    lifter = GraphLifter(CONFIG, torch.device('cpu'), small.capacities)
    pending = lifter.launch(*inputs)
    keys, valid, status = pending.observed()
    assert torch.equal(keys[valid], expected.observed_keys)
    assert not valid[expected.observed_keys.numel():].any()
    assert_same_frame(pending.result(status.tolist()), expected)
    assert pending.launched and lifter.stats['regrowths'] == 0


@pytest.mark.parametrize('changes', [
    {'outlier_neighbors': 0},
    {'min_voxels_after_boundary': 0, 'denoise_min_neighbors': 1},
    {'query_radius_m': 0.008, 'coverage_min': 0.9},
    {'outlier_neighbors': 3, 'outlier_std_ratio': 0.5, 'min_mask_points': 40},
])
def test_padded_lifting_follows_every_threshold(changes):
    config = dataclasses.replace(CONFIG, **changes)
    inputs = _tensors(*synthetic_frame(seed=4))
    assert_same_frame(GraphLifter(config, torch.device('cpu'), SMALL)(*inputs),
                      lift_masks(*inputs, config))


@pytest.mark.parametrize('case', ['invalid_depth', 'no_labels', 'empty_image', '399_pixels',
                                  '400_pixels'])
def test_padded_lifting_edge_cases(case):
    points, valid, labels = synthetic_frame(seed=3)
    if case == 'invalid_depth':
        valid = np.zeros_like(valid)
    elif case == 'no_labels':
        labels = np.zeros_like(labels)
    elif case == 'empty_image':
        points, valid, labels = points[:0], valid[:0], labels[:0]
    else:
        points, valid, labels = _pixel_grid_frame(int(case[:3]))
    inputs = _tensors(points, valid, labels)
    assert_same_frame(GraphLifter(CONFIG, torch.device('cpu'), SMALL)(*inputs),
                      lift_masks(*inputs, CONFIG))


def test_labels_past_the_label_capacity_fall_back_to_lift_masks():
    points, valid, labels = synthetic_frame(seed=2)
    labels = np.where(labels > 0, labels.astype(np.int64) << 20, 0)
    inputs = _tensors(points, valid, labels)
    lifter = GraphLifter(CONFIG, torch.device('cpu'), SMALL)
    frame = lifter(*inputs)
    assert lifter.stats['fallbacks'] == 1
    assert frame.labels.tolist()[0] >= 1 << 20
    assert_same_frame(frame, lift_masks(*inputs, CONFIG))


def test_unconverged_components_fall_back_to_lift_masks(monkeypatch):
    inputs = _tensors(*synthetic_frame(seed=0))
    monkeypatch.setattr(lifting_graph, 'COMPONENT_ROUNDS', 0)
    padded = lift_padded(*inputs, CONFIG, ROOMY)
    status = dict(zip(STATUS_FIELDS, padded.status.tolist()))
    assert status['not_converged'] == 1
    lifter = GraphLifter(CONFIG, torch.device('cpu'), SMALL)
    assert_same_frame(lifter(*inputs), lift_masks(*inputs, CONFIG))
    assert lifter.stats['fallbacks'] >= 1


def test_wide_masks_fall_back_to_lift_masks():
    points, valid, labels = synthetic_frame(seed=1)
    # One mask 1 km wide: its cells do not fit 15-bit coordinates.
    points = points.copy()
    points[labels == 1] *= np.where(np.arange(labels.size)[labels.reshape(-1) == 1, None] % 2,
                                    1.0, 1000.0)
    inputs = _tensors(points, valid, labels)
    lifter = GraphLifter(CONFIG, torch.device('cpu'), SMALL)
    assert_same_frame(lifter(*inputs), lift_masks(*inputs, CONFIG))
    assert lifter.stats['fallbacks'] == 1


def test_lanes_of_the_per_label_pixel_reductions_do_not_change_results(monkeypatch):
    inputs = _tensors(*synthetic_frame(seed=1))
    one_lane = lift_padded(*inputs, CONFIG, ROOMY)
    monkeypatch.setattr(lifting_graph, '_pixel_lanes', lambda device: 16)
    sixteen = lift_padded(*inputs, CONFIG, ROOMY)
    for name, expected, got in zip(one_lane._fields, one_lane, sixteen):
        assert torch.equal(expected, got), name
    index = torch.tensor([3, 3, 3, 0, 5, 3, 5, 7])
    keep = torch.tensor([True, True, False, True, True, True, True, True])
    assert lifting_graph._counts(index, keep, 8, lanes=4).tolist() == [1, 0, 0, 3, 0, 2, 0, 1]
    assert lifting_graph._counts(index, keep, 8).tolist() == [1, 0, 0, 3, 0, 2, 0, 1]


def test_padded_lifting_never_reads_device_data_on_the_host(host_reads):
    inputs = _tensors(*synthetic_frame(seed=0))
    with host_reads() as recorder:
        padded = lift_padded(*inputs, CONFIG, ROOMY)
    assert recorder.seen == []
    # The same recorder sees those of lift_masks (it would catch a regression).
    with host_reads() as recorder:
        lift_masks(*inputs, CONFIG)
    assert 'nonzero' in recorder.seen
    assert padded.status.shape == (len(STATUS_FIELDS),)


def test_supports_needs_eps_inside_the_cell_window():
    assert supports(CONFIG)
    wide = dataclasses.replace(CONFIG, query_radius_m=2 * CONFIG.voxel_size_m)
    assert not supports(wide)
    with pytest.raises(ValueError, match='query_radius_m'):
        GraphLifter(wide, torch.device('cpu'))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA graphs need a GPU')
def test_cuda_graph_replays_equal_lift_masks_across_frames_and_regrowth():
    device = torch.device('cuda')
    lifter = GraphLifter(CONFIG, device, SMALL)
    for seed in (0, 1, 2, 0):
        inputs = _tensors(*synthetic_frame(seed=seed), device=device)
        assert_same_frame(lifter(*inputs), lift_masks(*inputs, CONFIG))
    assert lifter.stats['captures'] >= 2 and lifter.stats['replays'] >= 4
    assert lifter.stats['fallbacks'] == 0


def test_a_failed_capture_warns_once_and_lifts_eagerly():
    # No CUDA graph can be captured for CPU tensors: the same path a driver failure takes.
    inputs = _tensors(*synthetic_frame(seed=1))
    lifter = GraphLifter(CONFIG, torch.device('cpu'), SMALL, use_graph=True)
    with pytest.warns(RuntimeWarning, match='capture failed'):
        frame = lifter(*inputs)
    assert lifter.disabled_reason is not None
    assert_same_frame(frame, lift_masks(*inputs, CONFIG))
    assert_same_frame(lifter(*inputs), frame)
    assert lifter.stats['fallbacks'] == 2 and lifter.stats['captures'] == 0
