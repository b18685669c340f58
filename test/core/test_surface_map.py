from collections import defaultdict

import numpy as np
import pytest
import torch

from onlineanyseg_ros.core.config import SegmenterConfig
from onlineanyseg_ros.core.surface_map import SurfaceMap
from onlineanyseg_ros.core.voxel_hash import pack_keys, unpack_keys, VoxelHash

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
CONFIG = SegmenterConfig()


def _plane_frame(rng, normal, count=4000, offset=0.3):
    normal = normal / np.linalg.norm(normal)
    axis_a = np.cross(normal, [1.0, 0.0, 0.0])
    axis_a /= np.linalg.norm(axis_a)
    axis_b = np.cross(normal, axis_a)
    uv = rng.uniform(-0.4, 0.4, (count, 2))
    points = uv[:, :1] * axis_a + uv[:, 1:] * axis_b + offset
    colors = rng.integers(0, 256, (count, 3))
    return points, colors


def _new_map(device, min_observations=3):
    config = SegmenterConfig(surface_min_observations=min_observations)
    voxel_hash = VoxelHash(device, initial_capacity=16)
    return SurfaceMap(config, device, voxel_hash), voxel_hash


@pytest.mark.parametrize('device', DEVICES)
def test_statistics_match_numpy_group_by(device):
    rng = np.random.default_rng(0)
    surface_map, voxel_hash = _new_map(device, min_observations=2)
    normal = np.array([0.2, -0.3, 1.0])
    frames = [_plane_frame(rng, normal) for _ in range(3)]
    # The third frame sees fewer points: some voxels get fewer observations.
    frames[2] = (frames[2][0][:2000], frames[2][1][:2000])
    groups = defaultdict(lambda: {'points': [], 'colors': [], 'frames': set()})
    for index, (points, colors) in enumerate(frames):
        slots = surface_map.integrate(torch.tensor(points, dtype=torch.float32, device=device),
                                      torch.tensor(colors, dtype=torch.uint8, device=device),
                                      torch.tensor(2.0 * normal, device=device))
        assert slots.shape == (len(points),)
        cells = np.floor(points.astype(np.float32).astype(np.float64) / CONFIG.voxel_size_m)
        for cell, point, color in zip(map(tuple, cells.astype(np.int64)), points, colors):
            groups[cell]['points'].append(point)
            groups[cell]['colors'].append(color)
            groups[cell]['frames'].add(index)
    surface = surface_map.surface()
    cells = unpack_keys(voxel_hash.keys[surface.slots]).cpu().numpy()
    expected_cells = {cell for cell, group in groups.items() if len(group['frames']) >= 2}
    assert {tuple(cell) for cell in cells} == expected_cells
    for row, cell in enumerate(map(tuple, cells)):
        group = groups[cell]
        np.testing.assert_allclose(surface.points[row].cpu().numpy(),
                                   np.mean(group['points'], axis=0), atol=1e-6)
        np.testing.assert_array_equal(surface.colors[row].cpu().numpy(),
                                      np.round(np.mean(group['colors'], axis=0)))
        assert surface.counts[row].item() == len(group['points'])
        assert surface.observations[row].item() == len(group['frames'])
    assert len(surface_map.surface(min_observations=1)) == len(groups)


@pytest.mark.parametrize('device', DEVICES)
def test_plane_normals_are_unit_and_face_the_camera(device):
    rng = np.random.default_rng(1)
    surface_map, _ = _new_map(device)
    normal = np.array([1.0, 2.0, -3.0])
    normal /= np.linalg.norm(normal)
    camera = 0.3 - 2.0 * normal  # the camera is on the negative side of the normal
    for _ in range(3):
        points, colors = _plane_frame(rng, normal, count=12000)
        surface_map.integrate(torch.tensor(points, device=device),
                              torch.tensor(colors, dtype=torch.uint8, device=device),
                              torch.tensor(camera, device=device))
    normals = surface_map.surface().normals.cpu().numpy()
    assert len(normals) > 500
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert np.all(normals @ -normal > 0.999)


def test_sphere_normals_follow_the_radius():
    rng = np.random.default_rng(2)
    surface_map, _ = _new_map('cpu', min_observations=1)
    directions = rng.normal(size=(60000, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    points = 0.5 * directions
    # The camera sits at the centre, so the normals must point inwards.
    surface_map.integrate(torch.tensor(points), torch.zeros((60000, 3), dtype=torch.uint8),
                          torch.zeros(3))
    surface = surface_map.surface()
    points = surface.points.numpy()
    radial = points / np.linalg.norm(points, axis=1, keepdims=True)
    cosine = np.sum(surface.normals.numpy() * -radial, axis=1)
    assert np.median(cosine) > 0.99
    assert np.all(cosine > 0.8)


@pytest.mark.parametrize('device', DEVICES)
def test_a_valid_mask_equals_integrating_the_valid_rows(device):
    rng = np.random.default_rng(5)
    normal = np.array([0.1, 0.4, 1.0])
    masked_map, masked_hash = _new_map(device, min_observations=1)
    compact_map, compact_hash = _new_map(device, min_observations=1)
    for _ in range(3):
        points, colors = _plane_frame(rng, normal, count=3000)
        points = torch.tensor(points, dtype=torch.float32, device=device)
        colors = torch.tensor(colors, dtype=torch.uint8, device=device)
        valid = torch.tensor(rng.random(3000) < 0.6, device=device)
        # Invalid rows hold junk the map must not see: NaN and far-away points.
        junk = torch.where(torch.rand(3000, 1, device=device) < 0.5, float('nan'), 50.0)
        slots = masked_map.integrate(torch.where(valid[:, None], points, junk), colors,
                                     torch.tensor(2.0 * normal, device=device), valid)
        expected = compact_map.integrate(points[valid], colors[valid],
                                         torch.tensor(2.0 * normal, device=device))
        assert torch.equal(slots[valid], expected)
        assert bool((slots[~valid] == -1).all())
    assert torch.equal(masked_hash.keys, compact_hash.keys)
    masked, compact = masked_map.surface(), compact_map.surface()
    assert torch.equal(masked.slots, compact.slots)
    assert torch.equal(masked.counts, compact.counts)
    assert torch.equal(masked.observations, compact.observations)
    assert torch.equal(masked.colors, compact.colors)
    torch.testing.assert_close(masked.points, compact.points)
    torch.testing.assert_close(masked.normals, compact.normals)
    with pytest.raises(ValueError, match='valid must be'):
        masked_map.integrate(points, colors, torch.zeros(3), valid[:10])


def test_arrays_grow_with_slots_added_by_another_user():
    surface_map, voxel_hash = _new_map('cpu', min_observations=1)
    # The mask graph allocates slots the map has never seen.
    voxel_hash.insert(pack_keys(torch.arange(3000 * 3).reshape(-1, 3)))
    points = torch.tensor([[0.01, 0.01, 0.01], [10.0, 10.0, 10.0]])
    slots = surface_map.integrate(points, torch.full((2, 3), 7, dtype=torch.uint8),
                                  torch.zeros(3))
    assert slots.min().item() >= 3000
    surface = surface_map.surface()
    assert surface.slots.tolist() == sorted(slots.tolist())
    assert surface.colors.tolist() == [[7, 7, 7]] * 2
    # Isolated voxels fall back to the view direction.
    np.testing.assert_allclose(surface.normals[0].numpy(), -np.ones(3) / np.sqrt(3), atol=1e-6)


def test_state_dict_round_trip_reset_and_validation():
    rng = np.random.default_rng(3)
    surface_map, voxel_hash = _new_map('cpu', min_observations=1)
    points, colors = _plane_frame(rng, np.array([0.0, 0.0, 1.0]))
    surface_map.integrate(torch.tensor(points), torch.tensor(colors, dtype=torch.uint8),
                          torch.tensor([0.0, 0.0, 2.0]))
    before = surface_map.surface()
    restored_hash = VoxelHash('cpu')
    restored_hash.load_state_dict(voxel_hash.state_dict())
    restored = SurfaceMap(surface_map.config, 'cpu', restored_hash)
    restored.load_state_dict(surface_map.state_dict())
    after = restored.surface()
    for name in ('slots', 'points', 'colors', 'normals', 'counts', 'observations'):
        assert torch.equal(getattr(before, name), getattr(after, name)), name
    with pytest.raises(ValueError, match='rows'):
        SurfaceMap(surface_map.config, 'cpu', VoxelHash('cpu')).load_state_dict(
            surface_map.state_dict())
    surface_map.reset()
    assert len(surface_map.surface()) == 0
    with pytest.raises(ValueError, match='uint8'):
        surface_map.integrate(torch.zeros((2, 3)), torch.zeros((2, 3)), torch.zeros(3))
