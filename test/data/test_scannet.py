"""Tests of the ScanNet-layout reader and writer."""

import logging
import shutil

import numpy as np
from PIL import Image
import pytest

from onlineanyseg_ros.data import io, scannet, synthetic


@pytest.fixture(scope='module')
def synthetic_scene(tmp_path_factory):
    """Write a small clean synthetic sequence; return (root, config, scene, poses)."""
    config = synthetic.SyntheticSceneConfig(num_frames=12, width=160, height=120,
                                            focal_px=131.25, depth_noise_std_m=0.0,
                                            gt_point_spacing_m=0.05, seed=5)
    root = tmp_path_factory.mktemp('scannet') / 'scene_r'
    synthetic.write_synthetic_sequence(root, config, progress=False)
    return root, config, synthetic.build_scene(config), synthetic.camera_trajectory(config)


@pytest.fixture
def scene_copy(synthetic_scene, tmp_path):
    """Return a private copy of the synthetic sequence folder (safe to break)."""
    return shutil.copytree(synthetic_scene[0], tmp_path / 'copy')


def test_reader_round_trips_the_generator(synthetic_scene):
    root, config, scene, poses = synthetic_scene
    sequence = scannet.ScanNetSequence(root)
    assert len(sequence) == config.num_frames and sequence.skipped_poses == 0
    assert sequence.layout == 'scannet'
    assert sequence.stems == [str(i) for i in range(config.num_frames)]  # 10 after 9
    np.testing.assert_allclose(sequence.K, synthetic.intrinsics(config))
    for i, frame in enumerate(sequence):
        rendered = synthetic.render_frame(scene, config, poses[i], i)
        assert frame.frame_index == i and frame.stamp_ns == round(i * 1e9 / 30.0)
        np.testing.assert_allclose(frame.T_world_camera, poses[i], atol=1e-7)
        assert frame.depth.dtype == np.float32
        assert np.abs(frame.depth - rendered.depth).max() <= 0.0005 + 1e-6
        assert np.abs(frame.color.astype(int) - rendered.color).mean() < 2.0
        np.testing.assert_array_equal(sequence.instance_image(i), rendered.instance)


def test_subsampling_and_max_frames(synthetic_scene):
    root = synthetic_scene[0]
    sequence = scannet.ScanNetSequence(root, every=5)
    assert sequence.frame_indices == [0, 5, 10] and sequence.stems == ['0', '5', '10']
    assert sequence[2].frame_index == 10 and sequence[-1].frame_index == 10
    assert scannet.ScanNetSequence(root, every=2, max_frames=4).frame_indices == [0, 2, 4, 6]
    with pytest.raises(IndexError):
        sequence[3]
    with pytest.raises(ValueError):
        scannet.ScanNetSequence(root, every=0)


def test_invalid_poses_are_skipped_counted_and_warned_once(scene_copy, caplog):
    (scene_copy / 'pose' / '3.txt').write_text('nan nan nan nan\n' * 4)
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    io.write_matrix(scene_copy / 'pose' / '7.txt', sheared)
    with caplog.at_level(logging.WARNING, logger='onlineanyseg_ros.data.scannet'):
        sequence = scannet.ScanNetSequence(scene_copy)
    assert sequence.skipped_poses == 2 and len(sequence) == 10
    assert 3 not in sequence.frame_indices and 7 not in sequence.frame_indices
    assert [frame.frame_index for frame in sequence] == sequence.frame_indices
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and '3, 7' in warnings[0].getMessage()
    # The neighbours keep their own poses: nothing is substituted.
    np.testing.assert_allclose(sequence[3].T_world_camera,
                               io.read_matrix(scene_copy / 'pose' / '4.txt'))


def test_broken_files_raise_clear_errors(scene_copy):
    (scene_copy / 'pose' / '2.txt').write_text('1 0 0 0\n0 1 0 0\n')
    with pytest.raises(ValueError, match='2.txt'):
        scannet.ScanNetSequence(scene_copy)
    io.write_matrix(scene_copy / 'pose' / '2.txt', np.eye(4))
    Image.fromarray(np.zeros((120, 160), np.uint8)).save(scene_copy / 'depth' / '4.png')
    sequence = scannet.ScanNetSequence(scene_copy)
    with pytest.raises(ValueError, match='4.png'):
        sequence[4]
    (scene_copy / 'depth' / '5.png').unlink()
    with pytest.raises(FileNotFoundError, match='5.png'):
        scannet.ScanNetSequence(scene_copy)
    shutil.rmtree(scene_copy / 'depth')
    with pytest.raises(FileNotFoundError, match='depth'):
        scannet.ScanNetSequence(scene_copy)
    with pytest.raises(FileNotFoundError, match='no color'):
        scannet.ScanNetSequence(scene_copy / 'pose')
    with pytest.raises(FileNotFoundError):
        scannet.ScanNetSequence(scene_copy / 'missing')


def test_scannet_size_colour_is_resized_to_depth(tmp_path):
    root = scannet.prepare_scannet_dirs(tmp_path / 'scene0000_00' / 'frames')
    K = np.array([[577.0, 0, 319.5], [0, 577.0, 239.5], [0, 0, 1]])
    scannet.write_intrinsics(root, K, np.diag([1170.0, 1170.0, 1.0]))
    v, u = np.mgrid[0:968, 0:1296]
    color = np.stack([u % 256, v % 256, (u // 256) * 16 + v // 256], axis=2).astype(np.uint8)
    Image.fromarray(color).save(root / 'color' / '0.png')
    depth = np.full((480, 640), 1500, np.uint16)
    io.write_uint16_png(root / 'depth' / '0.png', depth)
    io.write_matrix(root / 'pose' / '0.txt', np.eye(4))
    sequence = scannet.ScanNetSequence(tmp_path / 'scene0000_00')  # finds frames/
    frame = sequence[0]
    assert frame.color.shape == (480, 640, 3) and frame.depth.shape == (480, 640)
    np.testing.assert_allclose(frame.K, K)
    np.testing.assert_allclose(frame.depth, 1.5)
    rows = np.floor(np.arange(480) * 968 / 480).astype(int)
    cols = np.floor(np.arange(640) * 1296 / 640).astype(int)
    np.testing.assert_array_equal(frame.color, color[rows][:, cols])
    assert sequence.instance_image(0) is None


def test_scenenn_layout(tmp_path):
    root = tmp_path / '011'
    for name in ('image', 'depth', 'pose', 'intrinsic'):
        (root / name).mkdir(parents=True)
    K = np.eye(4)
    K[:3, :3] = [[544.47329, 0, 320], [0, 544.47329, 240], [0, 0, 1]]
    io.write_matrix(root / 'intrinsic' / 'intrinsic_depth.txt', K)
    for k in range(12):
        io.write_rgb(root / 'image' / f'image{k + 1:05d}.png', np.full((6, 8, 3), k, np.uint8))
        io.write_uint16_png(root / 'depth' / f'depth{k + 1:05d}.png',
                            np.full((6, 8), 1000 + k, np.uint16))
        pose = np.eye(4)
        pose[0, 3] = k
        io.write_matrix(root / 'pose' / f'{k}.txt', pose)
    sequence = scannet.ScanNetSequence(root, every=3)
    assert sequence.layout == 'scenenn'
    assert sequence.frame_indices == [0, 3, 6, 9]
    for frame in sequence:
        k = frame.frame_index
        assert frame.color[0, 0, 0] == k
        assert frame.depth[0, 0] == pytest.approx((1000 + k) / 1000)
        assert frame.T_world_camera[0, 3] == k  # k-th pose in natural order, not '10' < '2'


def test_write_frame_clips_depth_to_the_uint16_range(tmp_path):
    root = scannet.prepare_scannet_dirs(tmp_path, instance=True)
    depth = np.array([[0.0, 1.2344, 70.0, 65.5]], dtype=np.float32)
    scannet.write_frame(root, '0', np.zeros((1, 4, 3), np.uint8), depth, np.eye(4),
                        np.array([[0, 1, 2, 3]], np.uint16))
    np.testing.assert_array_equal(io.read_uint16_png(root / 'depth' / '0.png'),
                                  [[0, 1234, 0, 65500]])
    np.testing.assert_array_equal(io.read_uint16_png(root / 'instance' / '0.png'),
                                  [[0, 1, 2, 3]])
