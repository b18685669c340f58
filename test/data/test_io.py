"""Tests of the shared file helpers (atomic writes, matrices, images, PLY, labels)."""

import numpy as np
from PIL import Image
import pytest

from onlineanyseg_ros.data import io


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / 'out.txt'
    target.write_text('old')
    with pytest.raises(RuntimeError):
        with io.atomic_write(target, 'w') as handle:
            handle.write('half-written')
            raise RuntimeError('writer failed')
    assert target.read_text() == 'old'
    with io.atomic_write(target, 'w') as handle:
        handle.write('new')
    assert target.read_text() == 'new'
    assert sorted(path.name for path in tmp_path.iterdir()) == ['out.txt']


def test_matrix_round_trip_and_non_finite_values(tmp_path):
    pose = np.eye(4)
    pose[:3, 3] = (1.25, -0.5, 3.0)
    pose[0, 1] = 1 / 3
    io.write_matrix(tmp_path / 'pose.txt', pose)
    np.testing.assert_allclose(io.read_matrix(tmp_path / 'pose.txt'), pose, atol=1e-9)
    (tmp_path / 'nan.txt').write_text('nan 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 -inf\n')
    matrix = io.read_matrix(tmp_path / 'nan.txt')
    assert np.isnan(matrix[0, 0]) and matrix[3, 3] == -np.inf


@pytest.mark.parametrize('text', ['1 0 0 0\n0 1 0 0\n0 0 1 0\n',
                                  '1 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1',
                                  'a b c d\n0 1 0 0\n0 0 1 0\n0 0 0 1\n', ''])
def test_broken_matrix_raises_naming_the_file(tmp_path, text):
    path = tmp_path / 'broken_pose.txt'
    path.write_text(text)
    with pytest.raises(ValueError, match='broken_pose.txt'):
        io.read_matrix(path)


def test_uint16_png_round_trip_keeps_full_range(tmp_path):
    image = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)
    image[0, 0] = 65535
    io.write_uint16_png(tmp_path / 'depth.png', image)
    back = io.read_uint16_png(tmp_path / 'depth.png')
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, image)


def test_uint16_png_rejects_other_images(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / 'eight_bit.png')
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'rgb.png')
    (tmp_path / 'garbage.png').write_bytes(b'\x89PNG not really')
    for name in ('eight_bit.png', 'rgb.png', 'garbage.png'):
        with pytest.raises(ValueError, match=name):
            io.read_uint16_png(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        io.read_uint16_png(tmp_path / 'missing.png')
    with pytest.raises(ValueError):
        io.write_uint16_png(tmp_path / 'float.png', np.zeros((4, 4), np.float32))


def test_rgb_round_trip_png_exact_jpeg_close(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (8, 10, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    io.write_rgb(tmp_path / 'c.png', smooth)
    np.testing.assert_array_equal(io.read_rgb(tmp_path / 'c.png'), smooth)
    io.write_rgb(tmp_path / 'c.jpg', smooth)
    back = io.read_rgb(tmp_path / 'c.jpg')
    assert back.shape == smooth.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - smooth).mean() < 6
    Image.fromarray(smooth[..., 0]).save(tmp_path / 'grey.png')
    np.testing.assert_array_equal(io.read_rgb(tmp_path / 'grey.png'),
                                  np.repeat(smooth[..., :1], 3, axis=2))
    with pytest.raises(ValueError, match='suffix'):
        io.write_rgb(tmp_path / 'c.bmp', smooth)


def test_ply_round_trip_with_extra_properties(tmp_path):
    rng = np.random.default_rng(1)
    points = rng.normal(size=(50, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    ids = rng.integers(0, 9, 50).astype(np.int32)
    io.write_ply(tmp_path / 'cloud.ply', points, colors, {'instance_id': ids})
    assert b'binary_little_endian' in (tmp_path / 'cloud.ply').read_bytes()[:80]
    ply = io.read_ply(tmp_path / 'cloud.ply')
    np.testing.assert_array_equal(ply.points, points)
    np.testing.assert_array_equal(ply.colors, colors)
    np.testing.assert_array_equal(ply.extra['instance_id'], ids)
    assert ply.extra['instance_id'].dtype == np.int32
    io.write_ply(tmp_path / 'bare.ply', points)
    assert io.read_ply(tmp_path / 'bare.ply').colors is None


def test_ply_reads_ascii_with_faces_and_rejects_truncation(tmp_path):
    (tmp_path / 'mesh.ply').write_text(
        'ply\nformat ascii 1.0\ncomment made by hand\nelement vertex 3\nproperty float x\n'
        'property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n'
        'property uchar blue\nproperty uchar alpha\nelement face 1\n'
        'property list uchar int vertex_indices\nend_header\n'
        '0 0 0 255 0 0 255\n1 0 0 0 255 0 255\n0 1 0.5 0 0 255 255\n3 0 1 2\n')
    ply = io.read_ply(tmp_path / 'mesh.ply')
    np.testing.assert_array_equal(ply.points[2], [0, 1, 0.5])
    np.testing.assert_array_equal(ply.colors[:, 0], [255, 0, 0])
    assert ply.extra['alpha'].tolist() == [255, 255, 255]
    points = np.zeros((10, 3), np.float32)
    io.write_ply(tmp_path / 'cut.ply', points)
    data = (tmp_path / 'cut.ply').read_bytes()
    (tmp_path / 'cut.ply').write_bytes(data[:-7])
    with pytest.raises(ValueError, match='truncated'):
        io.read_ply(tmp_path / 'cut.ply')
    (tmp_path / 'text.ply').write_text('not a ply\n')
    with pytest.raises(ValueError, match='text.ply'):
        io.read_ply(tmp_path / 'text.ply')


def test_label_file_and_json(tmp_path):
    labels = np.array([0, 1001, 3002, 26015], dtype=np.int64)
    io.write_label_file(tmp_path / 'scene.txt', labels)
    np.testing.assert_array_equal(io.read_label_file(tmp_path / 'scene.txt'), labels)
    (tmp_path / 'bad.txt').write_text('1\n2.5x\n')
    with pytest.raises(ValueError, match='bad.txt'):
        io.read_label_file(tmp_path / 'bad.txt')
    io.write_json(tmp_path / 'meta.json', {'a': [1, 2]})
    assert '"a"' in (tmp_path / 'meta.json').read_text()
