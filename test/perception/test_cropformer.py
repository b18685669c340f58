"""CropFormer adapter: mask selection and overlap rule, resizing, and the missing-install error."""

import numpy as np
import pytest
import torch

from onlineanyseg_ros.core.types import RgbdFrame
from onlineanyseg_ros.perception.cropformer import (CropFormerConfig, CropFormerMaskGenerator,
                                                    CropFormerUnavailable, select_masks)
from onlineanyseg_ros.perception.factory import make_mask_generator


def _box(shape, top, bottom, left, right):
    mask = np.zeros(shape, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def test_higher_score_wins_overlaps_and_ids_follow_score():
    shape = (60, 80)
    masks = np.stack([_box(shape, 0, 30, 0, 40),      # 0.7
                      _box(shape, 10, 50, 20, 70),    # 0.9: wins the overlap with both
                      _box(shape, 40, 60, 0, 30),     # 0.8
                      _box(shape, 0, 60, 0, 80)])     # 0.5: below the threshold
    scores = np.array([0.7, 0.9, 0.8, 0.5])
    labels, kept = select_masks(masks, scores, confidence_threshold=0.6, min_mask_pixels=100)
    np.testing.assert_allclose(kept, [0.9, 0.8, 0.7])
    assert labels.dtype == np.int32
    expected = np.zeros(shape, dtype=np.int32)
    expected[masks[0]] = 3
    expected[masks[2]] = 2
    expected[masks[1]] = 1
    np.testing.assert_array_equal(labels, expected)


def test_small_and_swallowed_masks_are_dropped():
    shape = (40, 40)
    masks = np.stack([_box(shape, 0, 40, 0, 40),      # 0.95, covers everything
                      _box(shape, 5, 30, 5, 30),      # 0.9, fully inside: ends up empty
                      _box(shape, 0, 5, 0, 5),        # 0.99 but 25 px < 100
                      _box(shape, 0, 20, 0, 10)])     # 0.6 exactly: kept by >=, then empty
    labels, kept = select_masks(torch.from_numpy(masks), torch.tensor([0.95, 0.9, 0.99, 0.6]),
                                confidence_threshold=0.6, min_mask_pixels=100)
    np.testing.assert_allclose(kept, [0.95])
    assert np.all(labels == 1)


def test_no_masks_give_an_empty_label_image():
    labels, kept = select_masks(np.zeros((0, 8, 8), dtype=bool), np.zeros(0))
    assert labels.shape == (8, 8) and not labels.any() and kept.shape == (0,)


def test_generator_resizes_and_feeds_bgr():
    height, width = 240, 320
    color = np.zeros((height, width, 3), dtype=np.uint8)
    color[..., 0] = 200  # red in RGB
    frame = RgbdFrame(color=color, depth=np.ones((height, width), dtype=np.float32),
                      K=np.eye(3), T_world_camera=np.eye(4))
    seen = {}

    def fake_predictor(bgr):
        seen['shape'], seen['pixel'] = bgr.shape, bgr[0, 0].tolist()
        masks = torch.zeros((2, 480, 640), dtype=torch.bool)
        masks[0, :240] = True
        masks[1, 200:] = True
        return masks, torch.tensor([0.8, 0.9])

    obs = CropFormerMaskGenerator(CropFormerConfig(device='cpu'),
                                  predictor=fake_predictor).generate(frame)
    assert seen == {'shape': (480, 640, 3), 'pixel': [0, 0, 200]}
    assert obs.labels.shape == (height, width) and obs.features is None
    np.testing.assert_allclose(obs.scores, [0.9, 0.8])
    assert np.all(obs.labels[:100] == 2) and np.all(obs.labels[100:] == 1)


def test_missing_install_raises_one_clear_error(tmp_path):
    config = CropFormerConfig(config_file=str(tmp_path / 'missing.yaml'), device='cpu')
    with pytest.raises(CropFormerUnavailable) as error:
        make_mask_generator('cropformer', config=config)
    message = str(error.value)
    assert 'missing.yaml not found' in message and 'no checkpoint given' in message
    assert 'detectron2' in message and 'geometric backend' in message


def test_config_rejects_bad_device():
    with pytest.raises(ValueError, match='device'):
        CropFormerConfig(device='tpu')
