"""Simulated masks: exact without noise, each error mode as documented, CLIP-like cosines."""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from onlineanyseg_ros.core.types import RgbdFrame
from onlineanyseg_ros.perception.simulated import (make_feature_prototypes, noise_free_config,
                                                   simulate_masks, SimulatedMaskConfig,
                                                   SimulatedMaskGenerator)

# Instances 3 and 7 touch (shared column edge); 12 stands alone. 3 is twice as large as 7.
CATEGORIES = {3: 0, 7: 0, 12: 1}


def _scene():
    gt = np.zeros((60, 80), np.uint16)
    gt[5:25, 5:35] = 3
    gt[5:25, 35:50] = 7
    gt[35:55, 55:78] = 12
    return gt


def _simulate(gt, config, seed=0, categories=CATEGORIES):
    prototypes = make_feature_prototypes(categories, config, seed=1)
    return simulate_masks(gt, np.random.default_rng(seed), config, prototypes), prototypes


def _masks_of(labels, region):
    """Return the sorted mask ids found inside the boolean ``region``."""
    ids = np.unique(labels[region])
    return ids[ids > 0].tolist()


def _frame(shape, index):
    return RgbdFrame(color=np.zeros(shape + (3,), np.uint8), depth=np.ones(shape, np.float32),
                     K=np.eye(3), T_world_camera=np.eye(4), frame_index=index)


def test_noise_free_masks_equal_ground_truth_up_to_relabelling():
    gt = _scene()
    config = noise_free_config(min_mask_pixels=10)
    features_by_instance = {g: [] for g in CATEGORIES}
    for seed in range(12):
        obs, _ = _simulate(gt, config, seed)
        assert obs.labels.dtype == np.int32
        assert sorted(np.unique(obs.labels).tolist()) == [0, 1, 2, 3]
        for gt_id in CATEGORIES:
            (mask,) = _masks_of(obs.labels, gt == gt_id)
            np.testing.assert_array_equal(obs.labels == mask, gt == gt_id)
            features_by_instance[gt_id].append(obs.features[mask - 1])
        assert np.all((obs.labels > 0) == (gt > 0))
        assert obs.features.dtype == np.float32 and obs.features.shape == (3, 1024)
        np.testing.assert_allclose(np.linalg.norm(obs.features, axis=1), 1.0, atol=1e-5)
        assert obs.scores.dtype == np.float32 and np.all(obs.scores >= 0.96)
    low_end = config.same_object_cosine - config.cosine_jitter
    for features in features_by_instance.values():
        cosines = np.stack(features) @ np.stack(features).T
        pairs = cosines[np.triu_indices(len(features), k=1)]
        assert pairs.min() >= low_end - 0.02
        assert abs(pairs.mean() - config.same_object_cosine) < 0.02


def test_over_segmentation_splits_every_instance_into_two_masks():
    gt = _scene()
    config = noise_free_config(over_segmentation_prob=1.0, min_mask_pixels=1)
    clean, _ = _simulate(gt, noise_free_config(min_mask_pixels=1))
    for seed in range(5):
        obs, _ = _simulate(gt, config, seed)
        assert obs.num_masks == 6
        for gt_id in CATEGORIES:
            instance = gt == gt_id
            parts = _masks_of(obs.labels, instance)
            assert len(parts) == 2
            np.testing.assert_array_equal(np.isin(obs.labels, parts), instance)
            sizes = [np.count_nonzero(obs.labels == part) for part in parts]
            assert min(sizes) >= np.floor(config.split_min_fraction * instance.sum())
        assert obs.scores.max() < clean.scores.min()


def test_under_segmentation_merges_touching_instances_only():
    gt = _scene()
    config = noise_free_config(under_segmentation_prob=1.0, min_mask_pixels=1)
    obs, prototypes = _simulate(gt, config)
    assert obs.num_masks == 2
    (merged,) = _masks_of(obs.labels, np.isin(gt, [3, 7]))
    (alone,) = _masks_of(obs.labels, gt == 12)
    np.testing.assert_array_equal(obs.labels == merged, np.isin(gt, [3, 7]))
    np.testing.assert_array_equal(obs.labels == alone, gt == 12)
    assert obs.scores[merged - 1] < obs.scores[alone - 1]
    # The merged embedding leans towards the dominant (larger) instance 3.
    rows = prototypes.instance_rows(np.array([3, 7]))
    to_dominant, to_minor = prototypes.instance_vectors[rows] @ obs.features[merged - 1]
    assert to_dominant > to_minor


def test_miss_probability_one_yields_no_masks():
    obs, _ = _simulate(_scene(), noise_free_config(miss_prob=1.0))
    assert obs.num_masks == 0
    assert obs.features.shape == (0, 1024) and obs.scores.shape == (0,)


def test_boundary_noise_stays_within_the_radius():
    gt = _scene()
    radius = 2
    config = noise_free_config(boundary_radius_px=radius, min_mask_pixels=1)
    changed = 0
    for seed in range(6):
        obs, _ = _simulate(gt, config, seed)
        assert obs.num_masks == 3
        for gt_id in CATEGORIES:
            instance = gt == gt_id
            (mask,) = _masks_of(obs.labels, ndimage.binary_erosion(instance, iterations=3))
            predicted = obs.labels == mask
            square = np.ones((3, 3), bool)
            inner = ndimage.binary_erosion(instance, square, iterations=radius)
            outer = ndimage.binary_dilation(instance, square, iterations=radius)
            assert np.all(predicted[inner]) and not np.any(predicted[~outer])
            changed += int(np.any(predicted != instance))
    assert changed > 0


def test_min_mask_pixels_drops_small_masks():
    gt = _scene()
    gt[40:43, 5:8] = 20
    categories = {**CATEGORIES, 20: 2}
    obs, _ = _simulate(gt, noise_free_config(min_mask_pixels=10), categories=categories)
    assert obs.num_masks == 3 and np.all(obs.labels[gt == 20] == 0)


def test_spurious_blobs_on_an_empty_frame():
    config = noise_free_config(spurious_per_frame=3.0, min_mask_pixels=20,
                               spurious_max_area_fraction=0.05)
    counts = []
    for seed in range(8):
        obs, _ = _simulate(np.zeros((60, 80), np.uint16), config, seed, categories={})
        sizes = np.bincount(obs.labels.ravel())[1:]
        assert np.all(sizes >= 20) and np.all(sizes <= 0.05 * 60 * 80 + 60)
        np.testing.assert_allclose(obs.scores, 0.6)
        np.testing.assert_allclose(np.linalg.norm(obs.features, axis=1), 1.0, atol=1e-5)
        counts.append(obs.num_masks)
    assert sum(counts) > 8


def test_feature_cosines_match_the_documented_ranges():
    categories = {gt_id: (gt_id - 1) // 4 for gt_id in range(1, 49)}  # 12 categories x 4
    gt = np.arange(1, 49, dtype=np.uint16).reshape(6, 8).repeat(6, axis=0).repeat(6, axis=1)
    config = noise_free_config(min_mask_pixels=1)
    features = []
    for seed in range(6):
        obs, _ = _simulate(gt, config, seed, categories)
        mask_of_instance = obs.labels[::6, ::6].ravel()
        features.append(obs.features[mask_of_instance - 1])
    features = np.stack(features)  # (frames, instances, D)
    cosines = np.einsum('aid,bjd->abij', features, features)
    frame_a, frame_b, inst_i, inst_j = np.indices(cosines.shape)
    category = np.array([categories[g] for g in range(1, 49)])
    across_frames = frame_a < frame_b
    same_object = cosines[across_frames & (inst_i == inst_j)]
    same_category = cosines[across_frames & (inst_i != inst_j)
                            & (category[inst_i] == category[inst_j])]
    cross_category = cosines[across_frames & (category[inst_i] != category[inst_j])]
    assert 0.83 <= same_object.mean() <= 0.93
    assert np.percentile(same_object, 1) >= 0.8 and same_object.max() <= 0.95
    assert 0.72 <= same_category.mean() <= 0.84
    assert np.percentile(same_category, 2) >= 0.67 and np.percentile(same_category, 98) <= 0.88
    assert np.percentile(cross_category, 2) >= 0.27 and np.percentile(cross_category, 98) <= 0.78
    assert cross_category.mean() < same_category.mean() - 0.1
    # Lower, but overlapping: the closest categories look alike.
    assert np.percentile(cross_category, 99) > np.percentile(same_category, 1)


def test_generator_is_deterministic_per_seed_and_frame():
    gt = _scene()
    config = SimulatedMaskConfig(min_mask_pixels=20)
    generator = SimulatedMaskGenerator(lambda index: gt, CATEGORIES, config, seed=5)
    again = SimulatedMaskGenerator(lambda index: gt, CATEGORIES, config, seed=5)
    other_seed = SimulatedMaskGenerator(lambda index: gt, CATEGORIES, config, seed=6)
    assert generator.name == 'simulated'
    first = generator.generate(_frame(gt.shape, 3))
    for repeat in (generator.generate(_frame(gt.shape, 3)), again.generate(_frame(gt.shape, 3))):
        np.testing.assert_array_equal(repeat.labels, first.labels)
        np.testing.assert_array_equal(repeat.features, first.features)
        np.testing.assert_array_equal(repeat.scores, first.scores)
    for different in (generator.generate(_frame(gt.shape, 4)),
                      other_seed.generate(_frame(gt.shape, 3))):
        assert not np.array_equal(different.features[:1], first.features[:1])


def test_generator_and_simulator_reject_bad_inputs():
    gt = _scene()
    generator = SimulatedMaskGenerator(lambda index: gt, CATEGORIES)
    with pytest.raises(ValueError, match='frame_index'):
        generator.generate(_frame(gt.shape, -1))
    with pytest.raises(ValueError, match='does not match'):
        generator.generate(_frame((30, 40), 0))
    with pytest.raises(ValueError, match=r'\[12\]'):
        _simulate(gt, noise_free_config(), categories={3: 0, 7: 0})
    with pytest.raises(ValueError, match='uint16'):
        _simulate(gt.astype(np.int32), noise_free_config())


@pytest.mark.parametrize('overrides', [
    {'miss_prob': 1.5}, {'feature_dim': 4}, {'boundary_radius_px': 1.0},
    {'same_object_cosine': 0.8, 'same_category_cosine': 0.85},
    {'cross_category_cosine_min': 0.6, 'cross_category_cosine_max': 0.5}])
def test_config_rejects_bad_values(overrides):
    with pytest.raises(ValueError, match='SimulatedMaskConfig'):
        SimulatedMaskConfig(**overrides)


def test_default_suite_produces_each_error_kind_on_a_realistic_frame():
    categories = {gt_id: gt_id % 5 for gt_id in range(1, 49)}
    gt = np.zeros((480, 640), np.uint16)
    for gt_id, (row, col) in zip(categories, itertools.product(range(6), range(8))):
        # Even ids reach their right-hand neighbour, so under-segmentation has candidates.
        gt[row * 80 + 5:row * 80 + 80, col * 80 + 5:col * 80 + 80 + 5 * (gt_id % 2 == 0)] = gt_id
    generator = SimulatedMaskGenerator(lambda index: gt, categories)
    masks_per_instance, instances_per_mask = [], []
    for index in range(3):
        obs = generator.generate(_frame(gt.shape, index))
        assert obs.labels.max() == obs.num_masks == len(obs.features) == len(obs.scores)
        assert np.all((obs.scores >= 0.6) & (obs.scores <= 1.0))
        masks_per_instance += [len(_masks_of(obs.labels, gt == g)) for g in categories]
        overlap = np.bincount(obs.labels.ravel() * 65536 + gt.ravel(),
                              minlength=(obs.num_masks + 1) * 65536)
        overlap = overlap.reshape(obs.num_masks + 1, 65536)[1:, 1:]
        instances_per_mask += np.count_nonzero(overlap >= 1000, axis=1).tolist()
    assert {0, 1, 2} <= set(masks_per_instance)  # missed, clean and split instances
    assert {0, 1, 2} <= set(instances_per_mask)  # spurious, clean and merged masks
