"""The precomputed-mask layout round-trips and rejects inconsistent files."""

import numpy as np
from PIL import Image
import pytest

from onlineanyseg_ros.core.types import MaskObservation, RgbdFrame
from onlineanyseg_ros.perception.precomputed import (PrecomputedMaskGenerator,
                                                     read_mask_observation,
                                                     write_mask_observation)


def _observation(num_masks=3, dim=8, highest_label=None, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_masks + 1, size=(6, 7)).astype(np.int32)
    labels[0, 0] = num_masks if highest_label is None else highest_label
    features = rng.standard_normal((num_masks, dim)).astype(np.float32)
    scores = rng.uniform(0.6, 1.0, num_masks).astype(np.float32)
    return MaskObservation(labels=labels, features=features, scores=scores)


def _frame(index, shape=(6, 7)):
    return RgbdFrame(color=np.zeros(shape + (3,), np.uint8), depth=np.ones(shape, np.float32),
                     K=np.eye(3), T_world_camera=np.eye(4), frame_index=index)


def test_round_trip_keeps_labels_embeddings_and_scores(tmp_path):
    obs = _observation(num_masks=300)  # ids above 255 need the 16-bit PNG
    write_mask_observation(tmp_path, '000042', obs)
    assert (tmp_path / 'mask' / '000042.png').is_file()
    assert sorted(p.name for p in tmp_path.rglob('*')) == sorted(
        ['mask', 'mask_embeddings', 'mask_scores', '000042.png', '000042.npy', '000042.npy'])
    read = read_mask_observation(tmp_path, '000042')
    assert read.labels.dtype == np.int32
    np.testing.assert_array_equal(read.labels, obs.labels)
    np.testing.assert_array_equal(read.features, obs.features)
    np.testing.assert_array_equal(read.scores, obs.scores)


def test_optional_files_are_optional_and_stale_ones_removed(tmp_path):
    write_mask_observation(tmp_path, 'a', _observation())
    labels_only = MaskObservation(labels=_observation(seed=1).labels)
    write_mask_observation(tmp_path, 'a', labels_only)
    read = read_mask_observation(tmp_path, 'a')
    np.testing.assert_array_equal(read.labels, labels_only.labels)
    assert read.features is None and read.scores is None


def test_missing_mask_file_reads_as_none(tmp_path):
    assert read_mask_observation(tmp_path, 'nothing') is None


def test_reads_reference_style_uint8_label_images(tmp_path):
    (tmp_path / 'mask').mkdir()
    labels = np.array([[0, 1], [2, 2]], np.uint8)
    Image.fromarray(labels).save(tmp_path / 'mask' / 'f.png')
    np.testing.assert_array_equal(read_mask_observation(tmp_path, 'f').labels, labels)


def _corrupt(tmp_path, folder, array):
    np.save(tmp_path / folder / 'x.npy', array)


@pytest.mark.parametrize('folder, array, message', [
    ('mask_embeddings', np.zeros((2, 8), np.float32), '2 embedding rows'),
    ('mask_embeddings', np.zeros((3, 8), np.float64), 'float32'),
    ('mask_embeddings', np.zeros(24, np.float32), 'float32 embeddings'),
    ('mask_scores', np.zeros(4, np.float32), '4 scores for 3 embedding rows'),
    ('mask_scores', np.zeros((3, 1), np.float32), 'float32 scores'),
    ('mask_scores', np.zeros(3, np.int64), 'float32 scores'),
])
def test_inconsistent_files_raise(tmp_path, folder, array, message):
    write_mask_observation(tmp_path, 'x', _observation())
    _corrupt(tmp_path, folder, array)
    with pytest.raises(ValueError, match=message):
        read_mask_observation(tmp_path, 'x')


def test_short_scores_without_embeddings_raise(tmp_path):
    obs = _observation()
    write_mask_observation(tmp_path, 'x', MaskObservation(labels=obs.labels, scores=obs.scores))
    _corrupt(tmp_path, 'mask_scores', np.zeros(2, np.float32))
    with pytest.raises(ValueError, match='reaches mask 3'):
        read_mask_observation(tmp_path, 'x')


def test_colour_label_image_raises(tmp_path):
    (tmp_path / 'mask').mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'mask' / 'rgb.png')
    with pytest.raises(ValueError, match='label image'):
        read_mask_observation(tmp_path, 'rgb')


def test_writer_rejects_what_the_reader_could_not_read(tmp_path):
    obs = _observation()
    with pytest.raises(ValueError, match='0..65535'):
        write_mask_observation(tmp_path, 'x', MaskObservation(labels=obs.labels - 1))
    with pytest.raises(ValueError, match='scores'):
        write_mask_observation(tmp_path, 'x', MaskObservation(obs.labels, obs.features,
                                                              obs.scores[:2]))
    assert not (tmp_path / 'mask' / 'x.png').exists()


def test_writes_leave_no_temporary_files(tmp_path):
    for stem in ('a', 'b'):
        write_mask_observation(tmp_path, stem, _observation())
        write_mask_observation(tmp_path, stem, _observation(seed=2))
    assert not list(tmp_path.rglob('.*'))


def test_generator_reads_by_frame_index_and_fills_gaps(tmp_path):
    obs = _observation()
    write_mask_observation(tmp_path, 'frame-b', obs)
    generator = PrecomputedMaskGenerator(tmp_path, ['frame-a', 'frame-b'])
    assert generator.name == 'precomputed'
    assert generator.has_masks('frame-b') and not generator.has_masks('frame-a')
    np.testing.assert_array_equal(generator.generate(_frame(1)).labels, obs.labels)
    empty = generator.generate(_frame(0))
    assert empty.num_masks == 0 and empty.labels.shape == (6, 7) and empty.features is None
    with pytest.raises(ValueError, match='frame_index 2'):
        generator.generate(_frame(2))
    with pytest.raises(ValueError, match='depth image'):
        generator.generate(_frame(1, shape=(5, 7)))
