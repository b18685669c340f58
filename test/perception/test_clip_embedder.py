"""CLIP mask embedder: crops, batching, normalisation and row order with a tiny random model."""

import json
import logging

import numpy as np
import open_clip
from PIL import Image
import pytest
import torch

from onlineanyseg_ros.perception.clip_embedder import (ClipEmbedder, ClipEmbedderConfig,
                                                       load_clip_embedder, mask_crop_boxes)

TINY_NAME = 'onlineanyseg-test-tiny-clip'
TINY_MODEL = {'embed_dim': 32,
              'vision_cfg': {'image_size': 64, 'layers': 2, 'width': 64, 'head_width': 32,
                             'patch_size': 16},
              'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 32, 'heads': 2,
                           'layers': 1}}


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp('clip') / f'{TINY_NAME}.json'
    path.write_text(json.dumps(TINY_MODEL))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return open_clip.create_model(TINY_NAME)


@pytest.fixture(scope='module')
def embedder(tiny_model):
    return ClipEmbedder(tiny_model, ClipEmbedderConfig(model=TINY_NAME, device='cpu',
                                                       batch_size=4))


@pytest.fixture(scope='module')
def image_and_labels():
    rng = np.random.default_rng(0)
    # Smooth colours, so that resampling differences stay small.
    coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    color = np.asarray(Image.fromarray(coarse).resize((160, 120), Image.BILINEAR))
    labels = np.zeros((120, 160), dtype=np.int32)
    labels[10:40, 20:60] = 1
    labels[50:100, 30:50] = 3          # id 2 is absent
    labels[0:5, 150:160] = 4           # touches the image corner: growth is clamped
    labels[60:110, 90:150] = 5
    labels[70:80, 100:110] = 0         # a hole does not change the box
    return color, labels


def test_crop_boxes_grow_by_level_and_clamp(image_and_labels):
    _, labels = image_and_labels
    ids, boxes = mask_crop_boxes(labels)
    assert ids.tolist() == [1, 3, 4, 5]
    # mask 1: rows 10..39, cols 20..59 -> h 30, w 40 -> steps 3 rows, 4 cols per level
    assert boxes[0].tolist() == [[10, 40, 20, 60], [7, 43, 16, 64], [4, 46, 12, 68]]
    # mask 4 at the top-right corner: h 5 -> int(0.5) = 0 rows, w 10 -> 1 col, clamped
    assert boxes[2].tolist() == [[0, 5, 150, 160], [0, 5, 149, 160], [0, 5, 148, 160]]


def test_batched_rows_match_a_per_mask_loop(embedder, image_and_labels):
    color, labels = image_and_labels
    batched = embedder.embed_masks(color, labels)
    assert batched.shape == (5, 32) and batched.dtype == np.float32
    assert np.all(batched[1] == 0), 'absent id 2 gets a zero row'
    present = [0, 2, 3, 4]
    np.testing.assert_allclose(np.linalg.norm(batched[present], axis=1), 1.0, atol=1e-5)
    for k in (1, 3, 4, 5):
        single = embedder.embed_masks(color, np.where(labels == k, k, 0))
        np.testing.assert_allclose(batched[k - 1], single[k - 1], atol=2e-5)
    # Different masks see different crops, so their rows differ.
    assert np.abs(batched[0] - batched[4]).max() > 1e-3


def _reference_embedding(model, color, mask, levels=3, expansion=0.1):
    """Embed one mask the reference way: PIL crops on a white square, open_clip transform."""
    preprocess = open_clip.image_transform(TINY_MODEL['vision_cfg']['image_size'],
                                           is_train=False)
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    height, width = mask.shape
    crops = []
    for level in range(levels):
        grow_u = level * int(expansion * (right - left))
        grow_v = level * int(expansion * (bottom - top))
        box = (max(left - grow_u, 0), max(top - grow_v, 0), min(right + grow_u, width),
               min(bottom + grow_v, height))
        crop = Image.fromarray(color).crop(box)
        side = max(crop.size)
        canvas = Image.new('RGB', (side, side), (255, 255, 255))
        canvas.paste(crop, ((side - crop.size[0]) // 2, (side - crop.size[1]) // 2))
        crops.append(preprocess(canvas))
    with torch.inference_mode():
        features = torch.nn.functional.normalize(model.encode_image(torch.stack(crops)), dim=-1)
    return torch.nn.functional.normalize(features.mean(0), dim=-1).numpy()


def test_matches_the_pil_reference_pipeline_in_rgb(embedder, tiny_model, image_and_labels):
    color, labels = image_and_labels
    ours = embedder.embed_masks(color, labels)
    for k in (1, 3, 5):
        rgb = _reference_embedding(tiny_model, color, labels == k)
        bgr = _reference_embedding(tiny_model, np.ascontiguousarray(color[..., ::-1]),
                                   labels == k)
        assert float(ours[k - 1] @ rgb) > 0.999
        # The channel order matters to the model, and ours is RGB (not the reference's BGR).
        assert float(ours[k - 1] @ rgb) > float(ours[k - 1] @ bgr) + 1e-3


def test_empty_labels_and_bad_input(embedder, image_and_labels):
    color, labels = image_and_labels
    assert embedder.embed_masks(color, np.zeros_like(labels)).shape == (0, 32)
    with pytest.raises(ValueError, match='uint8'):
        embedder.embed_masks(color.astype(np.float32), labels)


def test_embed_text_is_unit_norm_and_ordered(embedder):
    texts = embedder.embed_text(['a chair', 'a table', 'a chair'])
    assert texts.shape == (3, 32) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(texts[0], texts[2], atol=1e-6)
    assert np.abs(texts[0] - texts[1]).max() > 1e-3


def test_missing_weights_give_none_and_one_log_line(tmp_path, caplog):
    missing = tmp_path / 'nowhere.bin'
    with caplog.at_level(logging.INFO, logger='onlineanyseg_ros.perception.clip_embedder'):
        assert load_clip_embedder(ClipEmbedderConfig(checkpoint_path=str(missing))) is None
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [f'CLIP weights not found at {missing}: semantic term off']


def test_loads_a_local_checkpoint(tiny_model, tmp_path):
    path = tmp_path / 'tiny.pt'
    torch.save(tiny_model.state_dict(), path)
    loaded = load_clip_embedder(ClipEmbedderConfig(model=TINY_NAME, checkpoint_path=str(path),
                                                   device='cpu'))
    assert loaded is not None and loaded.dtype == torch.float32
    for name, value in tiny_model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], value)


@pytest.mark.parametrize('field, value', [('device', 'gpu0'), ('precision', 'int8'),
                                          ('batch_size', 0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        ClipEmbedderConfig(**{field: value})
