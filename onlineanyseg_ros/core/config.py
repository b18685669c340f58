"""Frozen, validated configuration dataclasses and their one mapping from/to dicts.

Every field carries a description and a range in its metadata; ``validate_config`` checks
them at construction, YAML files and ROS parameters map onto the dataclasses through
``config_from_dict`` / ``config_to_dict`` (unknown keys are an error), and the ROS layer
declares one parameter per field from the same metadata.
"""

from dataclasses import dataclass, field, fields, replace
import math
from typing import Any, Dict, Optional, Sequence, Type, TypeVar

T = TypeVar('T')


def spec(default: Any, description: str, low: Optional[float] = None,
         high: Optional[float] = None, choices: Optional[Sequence[Any]] = None) -> Any:
    """Declare a config field with its description and allowed range (inclusive)."""
    return field(default=default, metadata={
        'description': description, 'low': low, 'high': high,
        'choices': tuple(choices) if choices is not None else None})


def validate_config(config: Any) -> None:
    """Raise ValueError naming the first field outside its declared type or range."""
    for f in fields(config):
        value = getattr(config, f.name)
        meta = f.metadata
        expected = type(f.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            object.__setattr__(config, f.name, value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(f'{type(config).__name__}.{f.name} must be {expected.__name__}, '
                             f'got {value!r}')
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f'{type(config).__name__}.{f.name} must be finite, got {value!r}')
        if meta.get('choices') is not None and value not in meta['choices']:
            raise ValueError(f'{type(config).__name__}.{f.name} must be one of '
                             f'{list(meta["choices"])}, got {value!r}')
        if meta.get('low') is not None and value < meta['low']:
            raise ValueError(f'{type(config).__name__}.{f.name} must be >= {meta["low"]}, '
                             f'got {value!r}')
        if meta.get('high') is not None and value > meta['high']:
            raise ValueError(f'{type(config).__name__}.{f.name} must be <= {meta["high"]}, '
                             f'got {value!r}')


def config_from_dict(cls: Type[T], values: Optional[Dict[str, Any]] = None,
                     base: Optional[T] = None) -> T:
    """Build ``cls`` from ``values`` over ``base`` (or the defaults); unknown keys raise."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f'unknown {cls.__name__} parameter(s): {", ".join(unknown)}')
    if base is None:
        return cls(**values)
    return replace(base, **values)


def config_to_dict(config: Any) -> Dict[str, Any]:
    """Return the config as a plain ``{field: value}`` dict."""
    return {f.name: getattr(config, f.name) for f in fields(config)}


@dataclass(frozen=True)
class SegmenterConfig:
    """Parameters of the 3D side of OnlineAnySeg (method.md section 8 names in brackets).

    ``SegmenterConfig()`` is the project default (weight-free geometric descriptor, semantic
    term used only when features arrive); ``reference_config()`` reproduces the published
    thresholds.
    """

    voxel_size_m: float = spec(0.025, 'Voxel edge of the surface and mask lattice '
                               '[scene.voxel_size].', 0.005, 0.2)
    depth_near_m: float = spec(0.1, 'Depths at or below this are invalid [cam.depth_near].',
                               0.0, 10.0)
    depth_far_m: float = spec(5.0, 'Depths at or beyond this are invalid [cam.depth_far].',
                              0.2, 50.0)
    surface_min_observations: int = spec(3, 'Keyframes that must observe a voxel before it is '
                                         'a surface point (TSDF weight threshold).', 1, 1000)
    min_mask_pixels: int = spec(400, 'Mask pixels with valid depth needed to lift a mask '
                                '[mask.few_pixel_threshold].', 1, 10 ** 7)
    min_mask_points: int = spec(20, 'Points left after denoising, and voxels after association, '
                                'needed to keep a mask [mask.few_voxel_threshold].', 1, 10 ** 7)
    denoise_min_neighbors: int = spec(4, 'DBSCAN min_points of the per-mask denoising.', 1, 100)
    outlier_neighbors: int = spec(20, 'Neighbours of the statistical outlier removal.', 0, 100)
    outlier_std_ratio: float = spec(2.0, 'Std ratio of the statistical outlier removal.',
                                    0.1, 100.0)
    coverage_min: float = spec(0.3, 'Share of mask points that must find a voxel '
                               '[mask.coverage_threshold].', 0.0, 1.0)
    query_radius_m: float = spec(0.03, 'Denoising eps and point-to-voxel association radius '
                                 '[mask.query_radius].', 0.001, 1.0)
    min_voxels_after_boundary: int = spec(50, 'A mask needs more voxels than this after boundary '
                                          'removal (hard-coded 50 in the reference).', 0, 10 ** 7)
    visible_ratio_min: float = spec(0.2, 'Visible share needed for a containment ratio to count '
                                    '[mask.mask_visible_threshold].', 0.0, 1.0)
    visible_min_voxels: int = spec(500, '...or this many visible voxels '
                                   '[mask.mask_visible_min_overlap].', 0, 10 ** 9)
    contain_min: float = spec(0.025, 'Containment ratios at or below this are zeroed '
                              '[mask.contain_min_threshold].', 0.0, 1.0)
    semantic_min_cosine: float = spec(0.6, 'Lower clamp a of the CLIP cosine mapping phi '
                                      '[seg.seman_min_value].', -1.0, 0.999)
    semantic_slope: float = spec(0.1, 'Slope k of the CLIP cosine mapping phi.', 1e-6, 100.0)
    sim_merge_threshold: float = spec(2.3, 'Stage-1 score threshold on overlap + semantic + '
                                      'geometric terms, when all three are active '
                                      '[seg.sim_merge_thresh].', -3.0, 3.0)
    inactive_term_credit: float = spec(1.0, 'Stage-1 agreement credited to each inactive term '
                                       '(semantic without mask features, geometric with '
                                       'descriptor none): the threshold drops by this much per '
                                       'inactive term.', 0.0, 1.0)
    merge_overlap_threshold: float = spec(0.4, 'Both containments must exceed this for a '
                                          'similarity merge [seg.merge_overlap_thresh].',
                                          0.0, 1.0)
    containing_ratio: float = spec(0.8, 'Supporter k must contain more than this of a mask '
                                   '[seg.containing_ratio].', 0.0, 1.0)
    contained_ratio: float = spec(0.3, 'A mask must cover more than this of supporter k '
                                  '[seg.contained_ratio].', 0.0, 1.0)
    merge_supporter_weight: int = spec(5, 'Weighted supporter count needed to merge '
                                       '[seg.merge_supporter_num].', 1, 10 ** 6)
    contain_merge_ratio: float = spec(0.8, 'Stage-2 containment needed for absorption '
                                      '[seg.merge_contain_ratio].', 0.0, 1.0)
    contain_merge_iterations: int = spec(10, 'Maximum stage-2 iterations '
                                         '[seg.merge_contain_iter_num].', 0, 1000)
    merge_every_n_keyframes: int = spec(5, 'Merge after every n-th mask insertion '
                                        '[seg.merge_kf_interval].', 1, 10 ** 6)
    valid_weight_cap: int = spec(5, 'Validity needs weight >= min(merge rounds + 2, this) '
                                 '[seg.mask_weight_threshold].', 1, 10 ** 6)
    singleton_expiry_keyframes: int = spec(20, 'Never-merged masks older than this many mask '
                                           'insertions are pruned.', 1, 10 ** 6)
    descriptor: str = spec('none', 'Geometric descriptor of the stage-1 score: none (term '
                           'credited, the CPU default), fpfh (weight-free, for GPUs) or fcgf '
                           '(learned, needs MinkowskiEngine and weights).',
                           choices=('none', 'fpfh', 'fcgf'))
    descriptor_radius_m: float = spec(0.075, 'Neighbourhood radius of the FPFH descriptor.',
                                      0.01, 1.0)
    fcgf_weights_path: str = spec('', 'FCGF checkpoint (ResUNetBN2C-16feat-3conv.pth) for the '
                                  'fcgf descriptor.')
    descriptor_min_points: int = spec(50, 'Surface points a mask needs for a geometric '
                                      'descriptor (masks without one cannot merge).', 1, 10 ** 7)
    merger: str = spec('graph', 'How masks merge: graph (the method) or greedy_overlap (the '
                       'simple baseline: best voxel IoU at insertion).',
                       choices=('graph', 'greedy_overlap'))
    greedy_iou_threshold: float = spec(0.25, 'greedy_overlap: voxel IoU needed to join an '
                                       'instance.', 0.0, 1.0)
    greedy_min_views: int = spec(3, 'greedy_overlap: masks an instance needs to be exported.',
                                 1, 10 ** 6)
    export_min_points: int = spec(25, 'Surface points an instance needs before filtering.',
                                  0, 10 ** 9)
    export_cluster_radius_m: float = spec(0.1, 'Single-linkage radius of the export filter '
                                          '(largest component kept).', 0.0, 10.0)
    export_min_points_final: int = spec(200, 'An exported instance needs more points than this.',
                                        0, 10 ** 9)
    cuda_graph_lifting: bool = spec(True, 'On a CUDA device, lift masks by replaying a CUDA '
                                    'graph of fixed-size tensors (one host sync per keyframe; '
                                    'same result); false = the eager path. No effect on the CPU.')

    def __post_init__(self) -> None:
        """Check every field's type and range, then cross-field rules."""
        validate_config(self)
        if self.depth_far_m <= self.depth_near_m:
            raise ValueError('SegmenterConfig.depth_far_m must exceed depth_near_m')


def reference_config() -> SegmenterConfig:
    """Return the published thresholds, scored as the reference scores them.

    The only difference to the default is that an inactive stage-1 term (no CLIP features,
    descriptor none) counts as zero, as in the reference, instead of being credited.
    """
    return SegmenterConfig(inactive_term_credit=0.0)


PROFILES = ('default', 'reference', 'greedy_baseline')


def segmenter_config(profile: str = 'default',
                     overrides: Optional[Dict[str, Any]] = None) -> SegmenterConfig:
    """Return the ``profile``'s SegmenterConfig with ``overrides`` applied (names checked)."""
    if profile not in PROFILES:
        raise ValueError(f'profile must be one of {list(PROFILES)}, got {profile!r}')
    if profile == 'reference':
        base = reference_config()
    elif profile == 'greedy_baseline':
        base = SegmenterConfig(merger='greedy_overlap')
    else:
        base = SegmenterConfig()
    return config_from_dict(SegmenterConfig, overrides, base=base)


def segmenter_overrides_from_yaml(path: str) -> Dict[str, Any]:
    """Read SegmenterConfig overrides from YAML.

    Accepts a flat ``{field: value}`` mapping, or a ROS 2 parameter file, whose
    ``<node>: ros__parameters: segmenter.<field>`` entries are used (any node key, e.g.
    ``/**/segmentation_node``).
    """
    import yaml
    with open(path) as handle:
        document = yaml.safe_load(handle) or {}
    if not isinstance(document, dict):
        raise ValueError(f'{path}: expected a mapping at the top level')
    parameter_sets = [values['ros__parameters'] or {} for values in document.values()
                      if isinstance(values, dict) and 'ros__parameters' in values]
    if not parameter_sets:
        return dict(document)
    return {key[len('segmenter.'):]: value for parameters in parameter_sets
            for key, value in parameters.items() if key.startswith('segmenter.')}
