"""CropFormer (Entity segmentation v2, Mask2Former) class-agnostic masks, method.md 1.3 steps 2-4.

detectron2 and the CropFormer project are imported only when a generator is built; when
either, the config file or the checkpoint is missing, building raises one
``CropFormerUnavailable`` whose message says what to install and where the files go.

Deliberate deviation: where accepted masks overlap, the HIGHER-scoring mask keeps the pixel
(the reference paints masks in decreasing score order, so the lowest-scoring one wins), and a
mask left without pixels is dropped instead of keeping an empty id.
"""

from dataclasses import dataclass
import os
import re
from typing import Callable, List, Optional, Tuple

import numpy as np

from onlineanyseg_ros.core.config import spec, validate_config
from onlineanyseg_ros.core.types import MaskObservation, RgbdFrame
from onlineanyseg_ros.data.scannet import resize_nearest

INSTALL_HINT = (
    'The CropFormer mask backend needs detectron2 and the CropFormer project: '
    'pip install "git+https://github.com/facebookresearch/detectron2.git"; '
    'git clone https://github.com/qqlu/Entity and put Entity/Entityv2/CropFormer on PYTHONPATH '
    '(it provides the mask2former and demo_cropformer packages; build its deformable-attention '
    'op with mask2former/modeling/pixel_decoder/ops/make.sh); download the checkpoint '
    'Mask2Former_hornet_3x_576d0b.pth from the CropFormer model zoo (Entityv2/CropFormer '
    'README) and pass its path and configs/entityv2/entity_segmentation/'
    'mask2former_hornet_3x.yaml as checkpoint and config_file. Without them use the '
    'geometric backend.')


class CropFormerUnavailable(RuntimeError):
    """detectron2, the CropFormer code, its config file or its checkpoint is missing."""


@dataclass(frozen=True)
class CropFormerConfig:
    """Parameters of the CropFormer mask generator."""

    config_file: str = spec('', 'CropFormer config YAML, e.g. <CropFormer>/configs/entityv2/'
                            'entity_segmentation/mask2former_hornet_3x.yaml.')
    checkpoint: str = spec('', 'Checkpoint file, e.g. Mask2Former_hornet_3x_576d0b.pth.')
    confidence_threshold: float = spec(0.6, 'Masks scoring below this are dropped.', 0.0, 1.0)
    min_mask_pixels: int = spec(500, 'Masks with fewer pixels (before overlaps are resolved) '
                                'are dropped.', 0, 10 ** 7)
    input_height: int = spec(480, 'Network input height; the colour image is resized to it '
                             '(nearest neighbour, as the reference).', 32, 4096)
    input_width: int = spec(640, 'Network input width.', 32, 4096)
    device: str = spec('cuda', 'Torch device of the network: cpu, cuda or cuda:N.')

    def __post_init__(self) -> None:
        """Check every field's type and range, then the device string."""
        validate_config(self)
        if not re.fullmatch(r'cpu|cuda(:\d+)?', self.device):
            raise ValueError(f'CropFormerConfig.device must be cpu, cuda or cuda:N, '
                             f'got {self.device!r}')


def select_masks(masks, scores, confidence_threshold: float = 0.6,
                 min_mask_pixels: int = 500) -> Tuple[np.ndarray, np.ndarray]:
    """Turn a scored mask stack into one label image, higher scores winning overlaps.

    Args:
        masks: bool ``(N, H, W)`` numpy array or torch tensor (any device).
        scores: float ``(N,)`` confidences.
        confidence_threshold: keep masks with ``score >= confidence_threshold``.
        min_mask_pixels: keep masks with at least this many pixels (counted before overlaps
            are resolved, as the reference).

    Returns:
        ``(labels, kept_scores)``: int32 ``(H, W)`` with ids 1..M by decreasing score (0 = no
        mask; masks left empty by overlaps are dropped and ids stay consecutive) and float32
        ``(M,)`` scores, row k-1 = id k.

    """
    import torch
    masks = torch.as_tensor(masks).bool()
    scores = torch.as_tensor(scores, device=masks.device).float()
    keep = (scores >= confidence_threshold) & (masks.flatten(1).sum(1) >= min_mask_pixels)
    masks, scores = masks[keep], scores[keep]
    order = torch.argsort(scores, descending=True, stable=True)
    masks, scores = masks[order], scores[order]
    height, width = masks.shape[1:]
    if masks.shape[0] == 0:
        return np.zeros((height, width), dtype=np.int32), np.zeros(0, dtype=np.float32)
    # argmax returns the first maximum: the highest-scoring mask covering the pixel.
    owner = torch.argmax(masks.to(torch.uint8), dim=0)
    covered = masks.any(dim=0)
    counts = torch.bincount(owner[covered], minlength=masks.shape[0])
    survivors = counts > 0
    new_id = torch.cumsum(survivors.long(), 0).int() * survivors.int()
    labels = torch.where(covered, new_id[owner], torch.zeros_like(owner, dtype=torch.int32))
    return labels.cpu().numpy().astype(np.int32), scores[survivors].cpu().numpy()


def _missing_files(config: CropFormerConfig) -> List[str]:
    """Return one phrase per missing or unset file of ``config``."""
    missing = []
    for field_name, what in (('config_file', 'config file'), ('checkpoint', 'checkpoint')):
        path = getattr(config, field_name)
        if not path:
            missing.append(f'no {what} given ({field_name})')
        elif not os.path.isfile(os.path.expanduser(path)):
            missing.append(f'{what} {path} not found')
    return missing


def build_cropformer_predictor(config: CropFormerConfig) -> Callable:
    """Return ``predict(bgr uint8 (H, W, 3)) -> (masks bool (N, H, W), scores (N,))``.

    Raises CropFormerUnavailable when detectron2, CropFormer or the files are missing.
    """
    problems = _missing_files(config)
    try:
        from detectron2.config import get_cfg
        from detectron2.projects.deeplab import add_deeplab_config
        from mask2former import add_maskformer2_config
        from demo_cropformer.predictor import VisualizationDemo
    except ImportError as error:
        problems.insert(0, f'cannot import {error.name or error}')
    if problems:
        raise CropFormerUnavailable('; '.join(problems) + '. ' + INSTALL_HINT)
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    cfg.merge_from_file(os.path.expanduser(config.config_file))
    cfg.merge_from_list(['MODEL.WEIGHTS', os.path.expanduser(config.checkpoint),
                         'MODEL.DEVICE', config.device])
    cfg.freeze()
    demo = VisualizationDemo(cfg)

    def predict(bgr: np.ndarray):
        instances = demo.run_on_image(bgr)['instances']
        return instances.pred_masks, instances.scores
    return predict


class CropFormerMaskGenerator:
    """CropFormer entity masks of one frame; implements ``MaskGenerator``."""

    name = 'cropformer'

    def __init__(self, config: CropFormerConfig = CropFormerConfig(),
                 predictor: Optional[Callable] = None) -> None:
        """Build the network now (or use ``predictor``, same contract, e.g. in tests)."""
        self.config = config
        self._predict = predictor if predictor is not None else build_cropformer_predictor(
            config)

    def generate(self, frame: RgbdFrame) -> MaskObservation:
        """Return int32 labels aligned with ``frame.depth`` and float32 scores (features None)."""
        config = self.config
        rgb = frame.color
        if rgb.shape[:2] != (config.input_height, config.input_width):
            rgb = resize_nearest(rgb, config.input_height, config.input_width)
        # detectron2 demos take OpenCV's BGR channel order.
        masks, scores = self._predict(np.ascontiguousarray(rgb[..., ::-1]))
        labels, kept_scores = select_masks(masks, scores, config.confidence_threshold,
                                           config.min_mask_pixels)
        if labels.shape != frame.shape:
            labels = resize_nearest(labels, *frame.shape)
        return MaskObservation(labels=labels, features=None, scores=kept_scores)
