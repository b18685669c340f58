"""Tests of the synthetic room generator: geometry, ground truth, determinism, CLI."""

import json

import numpy as np
import pytest

from onlineanyseg_ros import cli
from onlineanyseg_ros.data import io, primitives, synthetic


def small_config(**overrides):
    """Return a fast config: 160x120 images with the default field of view, 8 frames."""
    values = {'num_frames': 8, 'width': 160, 'height': 120, 'focal_px': 131.25,
              'depth_noise_std_m': 0.0, 'gt_point_spacing_m': 0.03}
    values.update(overrides)
    return synthetic.SyntheticSceneConfig(**values)


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    """Write one small sequence (with default depth noise) and return (root, config)."""
    config = small_config(depth_noise_std_m=0.002)
    root = tmp_path_factory.mktemp('synth') / 'scene_t'
    synthetic.write_synthetic_sequence(root, config, progress=False)
    return root, config


def instance_primitives(scene, instance_id):
    """Return the primitive indices of one instance."""
    return np.flatnonzero(scene.primitives.instance == instance_id)


def test_config_validation():
    with pytest.raises(ValueError, match='num_objects'):
        synthetic.SyntheticSceneConfig(num_objects=7)
    with pytest.raises(ValueError, match='trajectory_radius_m'):
        synthetic.SyntheticSceneConfig(trajectory_radius_m=1.9)
    with pytest.raises(ValueError, match='depth_noise_std_m'):
        synthetic.SyntheticSceneConfig(depth_noise_std_m=-0.1)


@pytest.mark.parametrize('num_objects', [8, 10, 14])
def test_scene_has_room_and_requested_objects(num_objects):
    scene = synthetic.build_scene(small_config(num_objects=num_objects))
    names = [instance.name for instance in scene.instances]
    assert names[:5] == ['floor', 'wall', 'wall', 'wall', 'wall']
    assert len(scene.instances) == 5 + num_objects
    assert [instance.instance_id for instance in scene.instances] == list(
        range(1, len(scene.instances) + 1))
    for instance in scene.instances:
        assert instance.class_id == synthetic.CLASS_IDS[instance.name]
        assert len(instance_primitives(scene, instance.instance_id)) >= 1
    table = names.index('table') + 1
    chair = names.index('chair') + 1
    assert len(instance_primitives(scene, table)) == 5  # top + 4 legs, one instance
    assert len(instance_primitives(scene, chair)) == 6  # seat + back + 4 legs
    assert set(scene.primitives.kind.tolist()) == {primitives.BOX, primitives.CYLINDER,
                                                   primitives.SPHERE}


def test_clean_depth_back_projects_onto_the_hit_instance_surface():
    config = small_config()
    scene = synthetic.build_scene(config)
    poses = synthetic.camera_trajectory(config)
    K = synthetic.intrinsics(config)
    rays = primitives.pixel_rays(K, config.width, config.height)
    for i in (0, 3, 6):
        frame = synthetic.render_frame(scene, config, poses[i], i)
        hit = frame.depth > 0
        np.testing.assert_array_equal(hit, frame.instance > 0)
        camera_points = rays[hit] * frame.depth[hit][:, None].astype(np.float64)
        world = camera_points @ poses[i][:3, :3].T + poses[i][:3, 3]
        ids = frame.instance[hit]
        for instance_id in np.unique(ids):
            on_instance = world[ids == instance_id]
            distance = np.min([np.abs(primitives.signed_distance(scene.primitives, p,
                                                                 on_instance))
                               for p in instance_primitives(scene, instance_id)], axis=0)
            assert distance.max() < 1e-3, (i, instance_id, distance.max())
        # No visible point lies inside any solid (nearest hit wins).
        inside = np.min([primitives.signed_distance(scene.primitives, p, world)
                         for p in range(len(scene.primitives))], axis=0)
        assert inside.min() > -1e-3


def test_every_instance_is_seen_along_the_default_trajectory():
    default = synthetic.SyntheticSceneConfig()
    # Default layout and trajectory, rendered at quarter size and every 10th frame for speed.
    config = small_config(num_frames=default.num_frames, width=320, height=240,
                          focal_px=default.focal_px / 2)
    scene = synthetic.build_scene(config)
    assert len(scene.instances) == 5 + default.num_objects
    poses = synthetic.camera_trajectory(config)
    best = np.zeros(len(scene.instances) + 1, dtype=np.int64)
    for i in range(0, config.num_frames, 10):
        counts = np.bincount(synthetic.render_frame(scene, config, poses[i], i).instance.ravel(),
                             minlength=len(best))
        best = np.maximum(best, counts)
    assert best[1:].min() >= 200, best  # >= 800 px at full resolution


def test_trajectory_is_a_smooth_inward_loop():
    config = synthetic.SyntheticSceneConfig(num_frames=120)
    poses = synthetic.camera_trajectory(config)
    heights = poses[:, 2, 3]
    assert heights.min() >= 1.2 - 1e-9 and heights.max() <= 1.6 + 1e-9
    radii = np.linalg.norm(poses[:, :2, 3], axis=1)
    np.testing.assert_allclose(radii, config.trajectory_radius_m)
    forward = poses[:, :3, 2]
    assert np.all(forward[:, 2] < 0)  # looking slightly down
    assert np.all(np.einsum('ij,ij->i', forward[:, :2], -poses[:, :2, 3]) > 0)  # inward
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert steps.max() < 0.1
    for pose in poses:
        np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-9)
        assert np.linalg.det(pose[:3, :3]) == pytest.approx(1.0)


def test_depth_noise_and_holes():
    clean_config = small_config()
    noisy_config = small_config(depth_noise_std_m=0.01, hole_fraction=0.2)
    scene = synthetic.build_scene(clean_config)
    pose = synthetic.camera_trajectory(clean_config)[2]
    clean = synthetic.render_frame(scene, clean_config, pose, 2).depth
    noisy = synthetic.render_frame(scene, noisy_config, pose, 2).depth
    valid = clean > 0
    holes = valid & (noisy == 0)
    assert 0.12 < holes.sum() / valid.sum() < 0.28
    kept = valid & (noisy > 0)
    normalised = (noisy[kept] - clean[kept]) / clean[kept] ** 2
    assert normalised.std() == pytest.approx(0.01, rel=0.15)
    np.testing.assert_array_equal(
        noisy, synthetic.render_frame(scene, noisy_config, pose, 2).depth)


def test_ground_truth_files_match_the_instance_table(written):
    root, config = written
    ply = io.read_ply(root / 'scene_t_vh_clean_2.ply')
    labels = io.read_label_file(root / 'scene_t.txt')
    meta = json.loads((root / 'meta.json').read_text())
    assert len(labels) == len(ply.points) == len(ply.colors)
    table = {row['instance_id']: row for row in meta['instances']}
    instance_ids = labels % 1000
    assert set(instance_ids.tolist()) == set(table)  # every instance has GT points, no void
    for instance_id, class_id in zip(instance_ids, labels // 1000):
        assert table[int(instance_id)]['class_id'] == class_id
    assert meta['config']['seed'] == config.seed and meta['scene'] == 'scene_t'


def test_ground_truth_points_lie_on_visible_surfaces():
    config = small_config()
    scene = synthetic.build_scene(config)
    points, colors, ids = synthetic.sample_ground_truth(scene, 0.03)
    assert points.dtype == np.float32 and colors.dtype == np.uint8 and ids.dtype == np.int32
    points = points.astype(np.float64)
    for instance_id in np.unique(ids):
        mine = points[ids == instance_id]
        distance = np.min([np.abs(primitives.signed_distance(scene.primitives, p, mine))
                           for p in instance_primitives(scene, instance_id)], axis=0)
        assert distance.max() < 1e-4
    inside = np.min([primitives.signed_distance(scene.primitives, p, points)
                     for p in range(len(scene.primitives))], axis=0)
    assert inside.min() > -1e-4
    objects = ids > 5
    assert points[objects, 2].min() > 1e-3  # faces resting on the floor are not sampled
    hx, hy, hz = scene.half_extent_m
    assert np.all(np.abs(points[:, 0]) <= hx + 1e-4) and np.all(points[:, 2] <= hz + 1e-4)


def test_same_seed_same_bytes_other_seed_differs(tmp_path, written):
    root, config = written
    again = tmp_path / 'scene_t'
    synthetic.write_synthetic_sequence(again, config, progress=False)
    files = sorted(path.relative_to(root) for path in root.rglob('*') if path.is_file())
    assert files == sorted(path.relative_to(again) for path in again.rglob('*')
                           if path.is_file())
    for relative in files:
        assert (root / relative).read_bytes() == (again / relative).read_bytes(), relative
    other = synthetic.build_scene(small_config(seed=config.seed + 1))
    base = synthetic.build_scene(config)
    assert not np.array_equal(other.primitives.center[5:], base.primitives.center[5:])


def test_written_layout(written):
    root, config = written
    for folder in ('color', 'depth', 'pose', 'instance'):
        assert len(list((root / folder).iterdir())) == config.num_frames
    K = io.read_matrix(root / 'intrinsic' / 'intrinsic_depth.txt')
    np.testing.assert_allclose(K[:3, :3], synthetic.intrinsics(config))
    np.testing.assert_allclose(io.read_matrix(root / 'intrinsic' / 'intrinsic_color.txt'), K)
    assert io.read_uint16_png(root / 'depth' / '0.png').shape == (config.height, config.width)


def test_cli_synth_prints_statistics(tmp_path, capsys):
    code = cli.main(['synth', str(tmp_path / 'cli_scene'), '--frames', '2', '--width', '64',
                     '--height', '48', '--objects', '8', '--seed', '3'])
    assert code == 0
    output = capsys.readouterr().out
    assert 'cli_scene: 13 instances' in output and 'frames/s' in output
    assert (tmp_path / 'cli_scene' / 'color' / '1.jpg').is_file()
    assert cli.main(['synth', str(tmp_path / 'bad'), '--objects', '3']) == 2
