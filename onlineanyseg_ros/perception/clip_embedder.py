"""CLIP embeddings of 2D masks (method.md section 1.3 step 5), batched on the device.

Per mask id: its bounding box, three crops of the raw image (tight, then grown by
``level * int(0.1 * width)`` / ``level * int(0.1 * height)`` per side, clamped), each pasted
centred on a white square canvas, resized to the model's input size, encoded, L2-normalised,
averaged over the crops and L2-normalised again. Row ``k-1`` of the result belongs to mask
``k``; ids absent from the label image get a zero row.

Deliberate deviations from the reference:
- the crops are RGB (the reference hands BGR arrays to PIL as RGB, so its CLIP sees red and
  blue swapped);
- the box is inclusive (the reference's slices drop the last row and column, so a one-pixel
  wide mask gives an empty crop);
- canvas, resize (bicubic, antialiased, rounded to 8 bit like PIL) and normalisation run as
  torch ops on the device instead of PIL on the CPU, so all crops of a frame are batched.

Weights are never downloaded here: ``load_clip_embedder`` takes a local checkpoint file or a
file already in the Hugging Face cache, and returns None (semantic term off) otherwise.
"""

from dataclasses import dataclass
import logging
import os
import re
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from onlineanyseg_ros.core.config import spec, validate_config

LOGGER = logging.getLogger(__name__)

# File names open_clip stores CLIP weights under in a Hugging Face model repository.
HF_WEIGHT_FILES = ('open_clip_model.safetensors', 'open_clip_pytorch_model.bin')


@dataclass(frozen=True)
class ClipEmbedderConfig:
    """Parameters of the CLIP mask embedder."""

    model: str = spec('ViT-H-14', 'open_clip model name.')
    pretrained: str = spec('laion2b_s32b_b79k', 'open_clip pretrained tag, used to find the '
                           'weights in the Hugging Face cache when checkpoint_path is empty.')
    checkpoint_path: str = spec('', 'Local open_clip checkpoint file; empty = look in the '
                                'Hugging Face cache.')
    device: str = spec('auto', 'Torch device: auto (cuda when available), cpu, cuda, cuda:N.')
    precision: str = spec('auto', 'Model precision: auto = bf16 on CUDA, fp32 on CPU.',
                          choices=('auto', 'fp32', 'bf16', 'fp16'))
    batch_size: int = spec(64, 'Crops per encoder forward pass.', 1, 4096)
    crop_levels: int = spec(3, 'Crops per mask: the tight box and level-1.. grown boxes.', 1, 8)
    crop_expansion: float = spec(0.1, 'Growth per level and side, as a share of the box size.',
                                 0.0, 2.0)

    def __post_init__(self) -> None:
        """Check every field's type and range, then the device string."""
        validate_config(self)
        if not re.fullmatch(r'auto|cpu|cuda(:\d+)?', self.device):
            raise ValueError(f'ClipEmbedderConfig.device must be auto, cpu, cuda or cuda:N, '
                             f'got {self.device!r}')


def resolve_device(device: str):
    """Return the torch.device for ``device`` ('auto' = cuda when available, else cpu)."""
    import torch
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device)


def resolve_dtype(precision: str, device):
    """Return the model dtype: ``precision`` or, for 'auto', bf16 on CUDA and fp32 on CPU."""
    import torch
    if precision == 'auto':
        return torch.bfloat16 if device.type == 'cuda' else torch.float32
    return {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}[precision]


def mask_crop_boxes(labels: np.ndarray, levels: int = 3,
                    expansion: float = 0.1) -> Tuple[np.ndarray, np.ndarray]:
    """Return the crop boxes of every mask id present in ``labels`` (int (H, W)).

    Returns ``(ids, boxes)``: ids int64 ``(N,)`` ascending, boxes int64 ``(N, levels, 4)`` as
    ``(top, bottom, left, right)`` pixel bounds with exclusive bottom/right. Level ``l`` grows
    the inclusive bounding box by ``l * int(expansion * width)`` columns and
    ``l * int(expansion * height)`` rows per side, clamped to the image.
    """
    height, width = labels.shape
    slices = ndimage.find_objects(np.asarray(labels, dtype=np.int64))
    ids = np.array([k + 1 for k, box in enumerate(slices) if box is not None], dtype=np.int64)
    tight = np.array([[box[0].start, box[0].stop, box[1].start, box[1].stop]
                      for box in slices if box is not None], dtype=np.int64).reshape(-1, 4)
    box_h = tight[:, 1] - tight[:, 0]
    box_w = tight[:, 3] - tight[:, 2]
    step = np.stack([(expansion * box_h).astype(np.int64),
                     (expansion * box_w).astype(np.int64)], axis=1)
    level = np.arange(levels, dtype=np.int64)[None, :]
    grow_v = level * step[:, :1]
    grow_u = level * step[:, 1:]
    boxes = np.stack([np.maximum(tight[:, None, 0] - grow_v, 0),
                      np.minimum(tight[:, None, 1] + grow_v, height),
                      np.maximum(tight[:, None, 2] - grow_u, 0),
                      np.minimum(tight[:, None, 3] + grow_u, width)], axis=-1)
    return ids, boxes


class ClipEmbedder:
    """Batched CLIP image/text embeddings around an already-built open_clip model."""

    def __init__(self, model, config: ClipEmbedderConfig = ClipEmbedderConfig(),
                 tokenizer=None) -> None:
        """Move ``model`` (an open_clip CLIP) to the configured device and precision.

        ``tokenizer`` maps a list of strings to token ids; default: open_clip's tokenizer of
        ``config.model``.
        """
        import open_clip
        import torch
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.precision, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        preprocess = open_clip.get_model_preprocess_cfg(model)
        size = preprocess['size']
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self._mean = torch.tensor(preprocess['mean'], device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(preprocess['std'], device=self.device).view(1, 3, 1, 1)
        self._tokenizer = tokenizer

    @property
    def feature_dim(self) -> int:
        """Embedding size D."""
        return int(self.model.visual.output_dim)

    def _square_crop(self, image, box: Sequence[int]):
        """Return float32 (3, S, S) pixels in [0, 255] of one crop pasted on a white square."""
        import torch
        import torch.nn.functional as F
        top, bottom, left, right = (int(b) for b in box)
        crop = image[:, top:bottom, left:right]
        side = max(bottom - top, right - left)
        canvas = torch.full((3, side, side), 255.0, device=image.device)
        row, col = (side - (bottom - top)) // 2, (side - (right - left)) // 2
        canvas[:, row:row + bottom - top, col:col + right - left] = crop
        resized = F.interpolate(canvas[None], size=self.image_size, mode='bicubic',
                                align_corners=False, antialias=True)
        # PIL hands CLIP an 8-bit image: round and clamp like it does.
        return torch.clamp(torch.round(resized[0]), 0.0, 255.0)

    def _crop_batches(self, image, boxes: np.ndarray) -> Iterator:
        """Yield normalised float (B, 3, S, S) batches of the crops of ``boxes`` (M, 4)."""
        import torch
        for start in range(0, boxes.shape[0], self.config.batch_size):
            chunk = boxes[start:start + self.config.batch_size]
            pixels = torch.stack([self._square_crop(image, box) for box in chunk])
            yield ((pixels / 255.0 - self._mean) / self._std).to(self.dtype)

    def embed_masks(self, color: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Return float32 ``(labels.max(), D)`` unit embeddings, row k-1 = mask k.

        ``color`` is uint8 (H, W, 3) RGB, ``labels`` int (H, W) with 0 = no mask, aligned
        with ``color``. Ids in 1..max that do not occur get a zero row.
        """
        import torch
        import torch.nn.functional as F
        if color.shape[:2] != labels.shape or color.ndim != 3 or color.dtype != np.uint8:
            raise ValueError(f'color must be uint8 (H, W, 3) matching labels {labels.shape}, '
                             f'got {color.dtype} {color.shape}')
        num_rows = int(labels.max()) if labels.size else 0
        result = np.zeros((num_rows, self.feature_dim), dtype=np.float32)
        ids, boxes = mask_crop_boxes(labels, self.config.crop_levels, self.config.crop_expansion)
        if ids.size == 0:
            return result
        image = torch.tensor(color, device=self.device)
        image = image.permute(2, 0, 1).float()
        encoded = []
        with torch.inference_mode():
            for batch in self._crop_batches(image, boxes.reshape(-1, 4)):
                encoded.append(F.normalize(self.model.encode_image(batch).float(), dim=-1))
            per_crop = torch.cat(encoded).view(ids.size, self.config.crop_levels, -1)
            per_mask = F.normalize(per_crop.mean(dim=1), dim=-1, eps=1e-7)
        result[ids - 1] = per_mask.cpu().numpy()
        return result

    def embed_text(self, texts: List[str]) -> np.ndarray:
        """Return float32 ``(len(texts), D)`` unit text embeddings."""
        import open_clip
        import torch
        import torch.nn.functional as F
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.config.model)
        tokens = self._tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            features = self.model.encode_text(tokens).float()
        return F.normalize(features, dim=-1).cpu().numpy()


def find_clip_weights(config: ClipEmbedderConfig) -> Tuple[Optional[str], str]:
    """Return ``(path or None, where it was looked for)`` without touching the network."""
    if config.checkpoint_path:
        path = os.path.expanduser(config.checkpoint_path)
        return (path if os.path.isfile(path) else None), path
    import open_clip
    tag_cfg = open_clip.get_pretrained_cfg(config.model, config.pretrained)
    hub = tag_cfg.get('hf_hub', '')
    if not hub:
        return None, f'(no Hugging Face entry for {config.model}/{config.pretrained})'
    repo_id, filename = os.path.split(hub)
    names = (filename,) if filename else HF_WEIGHT_FILES
    where = f'the Hugging Face cache ({repo_id}: {", ".join(names)})'
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None, where + ' [huggingface_hub not installed]'
    for name in names:
        cached = try_to_load_from_cache(repo_id, name)
        if isinstance(cached, str) and os.path.isfile(cached):
            return cached, where
    return None, where


def load_clip_embedder(config: ClipEmbedderConfig = ClipEmbedderConfig()
                       ) -> Optional[ClipEmbedder]:
    """Build the embedder from local weights, or log one line and return None."""
    path, where = find_clip_weights(config)
    if path is None:
        LOGGER.warning('CLIP weights not found at %s: semantic term off', where)
        return None
    import open_clip
    model = open_clip.create_model(config.model, pretrained=path)
    LOGGER.info('CLIP %s loaded from %s', config.model, path)
    return ClipEmbedder(model, config)
