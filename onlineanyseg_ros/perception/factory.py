"""Build a mask generator by name; each backend module is imported only when asked for."""

from typing import Any

from onlineanyseg_ros.core.config import config_from_dict
from onlineanyseg_ros.perception.base import MaskGenerator

MASK_BACKENDS = ('geometric', 'cropformer', 'simulated', 'precomputed')


def _configured(config_cls, options: dict):
    """Return ``options['config']`` or a ``config_cls`` built from the other options."""
    if 'config' in options:
        if len(options) > 1:
            raise ValueError(f'pass either config or {config_cls.__name__} fields, not both')
        return options['config']
    return config_from_dict(config_cls, options)


def make_mask_generator(name: str, **options: Any) -> MaskGenerator:
    """Return the mask generator ``name`` (one of ``MASK_BACKENDS``).

    Options per backend:
        geometric: ``config=GeometricMaskConfig`` or its fields as keywords.
        cropformer: ``config=CropFormerConfig`` or its fields as keywords (raises
            ``CropFormerUnavailable`` when detectron2, CropFormer or the files are missing).
        simulated: ``instance_image_loader``, ``instance_categories``, ``config``, ``seed``
            (``SimulatedMaskGenerator``).
        precomputed: ``mask_dir``, ``stems`` (``PrecomputedMaskGenerator``).

    """
    if name == 'geometric':
        from onlineanyseg_ros.perception.geometric import (GeometricMaskConfig,
                                                           GeometricMaskGenerator)
        return GeometricMaskGenerator(_configured(GeometricMaskConfig, options))
    if name == 'cropformer':
        from onlineanyseg_ros.perception.cropformer import (CropFormerConfig,
                                                            CropFormerMaskGenerator)
        return CropFormerMaskGenerator(_configured(CropFormerConfig, options))
    if name == 'simulated':
        from onlineanyseg_ros.perception.simulated import SimulatedMaskGenerator
        return SimulatedMaskGenerator(**options)
    if name == 'precomputed':
        from onlineanyseg_ros.perception.precomputed import PrecomputedMaskGenerator
        return PrecomputedMaskGenerator(**options)
    raise ValueError(f'unknown mask generator {name!r}; choose one of {", ".join(MASK_BACKENDS)}')
