"""Simulated 2D masks: ground-truth instances corrupted like a foundation-model segmenter.

Stands in for CropFormer + CLIP in tests and benchmarks with known answers. Per frame the
ground-truth instance image goes through, in this order (each step draws from one frame RNG,
so the result is fixed by the seed and the frame index):

1. under-segmentation: each instance, with ``under_segmentation_prob``, merges with one
   randomly chosen touching neighbour (8-connected contact in the image);
2. over-segmentation: each segment, with ``over_segmentation_prob``, is split in two along a
   random straight cut (each side keeps at least ``split_min_fraction`` of its pixels);
3. misses: each segment is dropped with ``miss_prob``;
4. boundary noise: each mask is eroded or dilated (3x3 square steps) by a radius drawn
   uniformly from ``-boundary_radius_px .. +boundary_radius_px`` (dilation claims
   neighbouring pixels);
5. spurious masks: Poisson(``spurious_per_frame``) random elliptic blobs are painted on top;
6. masks with fewer than ``min_mask_pixels`` pixels are dropped (CropFormer-like filtering).

Feature model (CLIP-like cosine structure, all vectors unit-norm in ``R^feature_dim``): a
scene-wide common direction ``g``; per category a prototype ``c = sqrt(a) g + sqrt(1-a) y``;
per instance a fixed vector ``v = sqrt(b) c + sqrt(1-b) z``; per mask the pixel-share blend of
the instance vectors it covers (so merged masks lean towards the dominant instance) mixed
with fresh orthogonal noise, ``m = sqrt(q) v + sqrt(1-q) n``. Spurious blobs get a clutter
vector ``sqrt(a) g + sqrt(1-a) y``. With the defaults the cosines between masks are about
0.83-0.93 (same object), 0.70-0.86 (different objects of one category) and 0.3-0.75
(different categories), as with CLIP ViT-H crops. Scores are ``0.6 + 0.4 * IoU * u`` with
``IoU`` the best overlap with a ground-truth instance and ``u ~ U[0.9, 1]``, so split,
merged and spurious masks score lower.

``SimulatedMaskConfig()`` is the *default simulated-noise suite* (moderate noise: over-seg
0.15, under-seg 0.1, miss 0.1, 2 spurious blobs, boundary +/- 2 px); ``noise_free_config()``
turns every mask error off.
"""

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from onlineanyseg_ros.core.config import spec, validate_config
from onlineanyseg_ros.core.types import MaskObservation, RgbdFrame

# Random-stream tags, so prototypes, instances and frames never share an RNG stream.
_COMMON_STREAM, _CATEGORY_STREAM, _INSTANCE_STREAM, _FRAME_STREAM = 0, 1, 2, 3
_MAX_LABEL = np.iinfo(np.uint16).max


@dataclass(frozen=True)
class SimulatedMaskConfig:
    """Noise levels and feature statistics of the simulated mask generator."""

    over_segmentation_prob: float = spec(0.15, 'Chance that a segment is split in two along a '
                                         'random straight cut.', 0.0, 1.0)
    under_segmentation_prob: float = spec(0.1, 'Chance that an instance merges with a touching '
                                          'neighbour.', 0.0, 1.0)
    miss_prob: float = spec(0.1, 'Chance that a segment yields no mask.', 0.0, 1.0)
    spurious_per_frame: float = spec(2.0, 'Mean number (Poisson) of spurious blobs per frame.',
                                     0.0, 100.0)
    spurious_max_area_fraction: float = spec(0.01, 'Largest spurious blob, as a share of the '
                                             'image area (smallest = min_mask_pixels).',
                                             1e-6, 0.5)
    boundary_radius_px: int = spec(2, 'Masks are eroded or dilated by up to this many pixels '
                                   '(uniform per mask).', 0, 50)
    split_min_fraction: float = spec(0.25, 'Each side of an over-segmentation cut keeps at '
                                     'least this share of the segment pixels.', 0.01, 0.5)
    min_mask_pixels: int = spec(500, 'Masks with fewer pixels are dropped (CropFormer-like).',
                                1, 10 ** 7)
    feature_dim: int = spec(1024, 'Embedding size (CLIP ViT-H/14: 1024); cosine statistics '
                            'hold to about 1/sqrt(feature_dim).', 16, 8192)
    same_object_cosine: float = spec(0.88, 'Mean cosine between two masks of the same object.',
                                     0.5, 1.0)
    same_category_cosine: float = spec(0.78, 'Mean cosine between masks of two objects of the '
                                       'same category.', 0.2, 1.0)
    cross_category_cosine_min: float = spec(0.3, 'Low end of the cosine between masks of '
                                            'objects of different categories.', 0.0, 1.0)
    cross_category_cosine_max: float = spec(0.75, 'High end of the cosine between masks of '
                                            'objects of different categories.', 0.0, 1.0)
    cosine_jitter: float = spec(0.05, 'Half-width of the uniform spread of the per-mask and '
                                'per-instance cosines around their means.', 0.0, 0.2)

    def __post_init__(self) -> None:
        """Check every field's type and range, then the ordering of the cosine targets."""
        validate_config(self)
        if not (self.cross_category_cosine_min <= self.cross_category_cosine_max
                < self.same_category_cosine <= self.same_object_cosine):
            raise ValueError('SimulatedMaskConfig cosines must satisfy cross_category_cosine_min'
                             ' <= cross_category_cosine_max < same_category_cosine <= '
                             'same_object_cosine')


def noise_free_config(**overrides: Any) -> SimulatedMaskConfig:
    """Return a config with every mask error off (features stay noisy), then ``overrides``."""
    clean = SimulatedMaskConfig(over_segmentation_prob=0.0, under_segmentation_prob=0.0,
                                miss_prob=0.0, spurious_per_frame=0.0, boundary_radius_px=0)
    return replace(clean, **overrides)


@dataclass(frozen=True)
class FeaturePrototypes:
    """Per-scene feature vectors of the simulated embedder (float32, unit rows).

    Attributes:
        instance_ids: int64 ``(G,)`` sorted ground-truth instance ids (1..65535).
        instance_vectors: float32 ``(G, D)`` fixed vector of each instance.
        category_ids: int64 ``(C,)`` sorted category ids.
        category_vectors: float32 ``(C, D)`` prototype of each category.
        common_direction: float32 ``(D,)`` direction shared by every embedding.
        category_weight_range: ``(low, high)`` of the weight ``a`` of ``common_direction``.

    """

    instance_ids: np.ndarray
    instance_vectors: np.ndarray
    category_ids: np.ndarray
    category_vectors: np.ndarray
    common_direction: np.ndarray
    category_weight_range: tuple

    def instance_rows(self, gt_ids: np.ndarray) -> np.ndarray:
        """Return the int64 rows of ``gt_ids`` in ``instance_vectors``; unknown ids raise."""
        gt_ids = np.asarray(gt_ids, dtype=np.int64)
        rows = np.searchsorted(self.instance_ids, gt_ids)
        known = rows < len(self.instance_ids)
        known[known] = self.instance_ids[rows[known]] == gt_ids[known]
        if not np.all(known):
            raise ValueError(f'ground-truth instance ids {gt_ids[~known].tolist()} have no '
                             'category in instance_categories')
        return rows.astype(np.int64)


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Return ``vectors`` (..., D) scaled to unit L2 norm along the last axis."""
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _mix(anchor: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return unit ``sqrt(w) anchor + sqrt(1-w) n`` rows, ``n`` random and orthogonal to anchor.

    ``anchor`` is (N, D) unit, ``weight`` (N,) in [0, 1]; each result has cosine ``sqrt(w)``
    with its anchor row.
    """
    noise = rng.standard_normal(anchor.shape)
    noise -= np.sum(noise * anchor, axis=1, keepdims=True) * anchor
    weight = np.clip(weight, 0.0, 1.0)[:, None]
    return _unit(np.sqrt(weight) * anchor + np.sqrt(1.0 - weight) * _unit(noise))


def make_feature_prototypes(instance_categories: Mapping[int, int],
                            config: SimulatedMaskConfig, seed: int) -> FeaturePrototypes:
    """Draw the scene's category and instance vectors; each id has its own seeded stream.

    ``instance_categories`` maps ground-truth instance id (1..65535) to a category id (>= 0).
    The same ``seed`` gives the same category prototypes in every scene.
    """
    ids = np.array(sorted(int(k) for k in instance_categories), dtype=np.int64)
    if ids.size and (ids[0] < 1 or ids[-1] > _MAX_LABEL):
        raise ValueError('instance_categories keys must be instance ids in 1..65535')
    categories = np.array([int(instance_categories[k]) for k in ids.tolist()], dtype=np.int64)
    if np.any(categories < 0) or seed < 0:
        raise ValueError('category ids and seed must be >= 0')
    dim, jitter = config.feature_dim, config.cosine_jitter
    common = _unit(np.random.default_rng([seed, _COMMON_STREAM]).standard_normal((1, dim)))
    # Cosine between masks of two categories ~ same_category_cosine * sqrt(a_j a_k).
    weight_range = (config.cross_category_cosine_min / config.same_category_cosine,
                    min(1.0, config.cross_category_cosine_max / config.same_category_cosine))
    category_ids = np.unique(categories)
    category_vectors = np.empty((len(category_ids), dim))
    for row, category in enumerate(category_ids.tolist()):
        rng = np.random.default_rng([seed, _CATEGORY_STREAM, category])
        category_vectors[row] = _mix(common, rng.uniform(*weight_range, size=1), rng)[0]
    # Cosine between masks of two instances of a category ~ same_object_cosine * b.
    instance_weight = config.same_category_cosine / config.same_object_cosine
    instance_vectors = np.empty((len(ids), dim))
    category_rows = np.searchsorted(category_ids, categories)
    for row, (gt_id, category_row) in enumerate(zip(ids.tolist(), category_rows.tolist())):
        rng = np.random.default_rng([seed, _INSTANCE_STREAM, gt_id])
        weight = rng.uniform(instance_weight - jitter, instance_weight + jitter, size=1)
        instance_vectors[row] = _mix(category_vectors[category_row][None], weight, rng)[0]
    return FeaturePrototypes(ids, instance_vectors.astype(np.float32), category_ids,
                             category_vectors.astype(np.float32),
                             common[0].astype(np.float32), weight_range)


def _neighbour_views(labels: np.ndarray):
    """Yield ``(a, b)`` views of ``labels`` pairing every pixel with its 8-neighbours once."""
    yield labels[:, :-1], labels[:, 1:]
    yield labels[:-1, :], labels[1:, :]
    yield labels[:-1, :-1], labels[1:, 1:]
    yield labels[:-1, 1:], labels[1:, :-1]


def _touching_pairs(segments: np.ndarray) -> np.ndarray:
    """Return int64 ``(P, 2)`` unique directed pairs of distinct touching segments (> 0)."""
    pairs = []
    for a, b in _neighbour_views(segments):
        contact = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([a[contact], b[contact]], axis=1))
    pairs = np.concatenate(pairs).astype(np.int64)
    return np.unique(np.concatenate([pairs, pairs[:, ::-1]]), axis=0)


def _relabel(segments: np.ndarray, keep: np.ndarray) -> tuple:
    """Map kept ids (bool ``keep`` over ids) to 1..N, the rest to 0; return (image, old ids)."""
    keep = keep.copy()
    keep[0] = False
    lut = np.cumsum(keep) * keep
    return lut[segments], np.flatnonzero(keep)


def _merge_touching(segments: np.ndarray, count: int, prob: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Merge each of ``count`` segments, with ``prob``, into one random touching neighbour."""
    merging = rng.random(count + 1) < prob
    pairs = _touching_pairs(segments)
    if not pairs.size or not merging.any():
        return segments
    keys = rng.random(len(pairs))
    order = np.lexsort((keys, pairs[:, 0]))
    last_of_source = np.r_[pairs[order[1:], 0] != pairs[order[:-1], 0], True]
    chosen = pairs[order[last_of_source]]
    chosen = chosen[merging[chosen[:, 0]]]
    graph = coo_matrix((np.ones(len(chosen)), (chosen[:, 0], chosen[:, 1])),
                       shape=(count + 1, count + 1))
    _, component = connected_components(graph, directed=False)
    # Background (node 0) is its own component; number the others 1..K.
    _, merged_id = np.unique(component[1:], return_inverse=True)
    return np.r_[0, merged_id + 1][segments]


def _split_segments(segments: np.ndarray, count: int, config: SimulatedMaskConfig,
                    rng: np.random.Generator) -> tuple:
    """Split each segment, with the configured prob, along a random straight cut."""
    splitting = rng.random(count + 1) < config.over_segmentation_prob
    splitting[0] = False
    angle = rng.uniform(0.0, np.pi, size=count + 1)
    fraction = rng.uniform(config.split_min_fraction, 1.0 - config.split_min_fraction,
                           size=count + 1)
    rows, cols = np.nonzero(splitting[segments])
    if not rows.size:
        return segments, count
    owner = segments[rows, cols]
    along = cols * np.cos(angle[owner]) + rows * np.sin(angle[owner])
    order = np.lexsort((along, owner))
    sizes = np.bincount(owner, minlength=count + 1)
    starts = np.cumsum(sizes) - sizes
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - starts[owner[order]]
    far_side = rank >= np.floor(fraction[owner] * sizes[owner])
    new_id = count + np.cumsum(splitting)
    split = segments.copy()
    split[rows[far_side], cols[far_side]] = new_id[owner[far_side]]
    return split, count + int(splitting.sum())


def _perturb_boundaries(segments: np.ndarray, count: int, radius_px: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Erode or dilate each segment by its own radius in ``-radius_px..radius_px`` pixels."""
    radii = rng.integers(-radius_px, radius_px + 1, size=count + 1)
    radii[0] = 0
    if radius_px == 0:
        return segments
    boundary = np.zeros(segments.shape, dtype=bool)
    for (a, b), (mark_a, mark_b) in zip(_neighbour_views(segments), _neighbour_views(boundary)):
        differ = a != b
        mark_a |= differ
        mark_b |= differ
    # Chessboard distances: a radius r acts like r passes of a 3x3 erosion or dilation.
    depth_px = ndimage.distance_transform_cdt(~boundary, metric='chessboard')
    perturbed = np.where(depth_px < -radii[segments], 0, segments)
    growing = radii[perturbed] > 0
    if growing.any():
        distance, (near_r, near_c) = ndimage.distance_transform_cdt(
            ~growing, metric='chessboard', return_indices=True)
        owner = perturbed[near_r, near_c]
        claimed = ~growing & (distance <= radii[owner])
        perturbed[claimed] = owner[claimed]
    return perturbed


def _add_spurious(segments: np.ndarray, count: int, config: SimulatedMaskConfig,
                  rng: np.random.Generator) -> tuple:
    """Paint Poisson(spurious_per_frame) random ellipses over ``segments``; return new count."""
    height, width = segments.shape
    blobs = int(rng.poisson(config.spurious_per_frame))
    low = float(config.min_mask_pixels)
    high = max(low, config.spurious_max_area_fraction * height * width)
    painted = segments.copy()
    if not blobs:
        return painted, count
    rows, cols = np.mgrid[0:height, 0:width]
    for blob in range(blobs):
        area, aspect = rng.uniform(low, high), rng.uniform(0.5, 2.0)
        centre_r, centre_c = rng.uniform(0, height), rng.uniform(0, width)
        angle = rng.uniform(0.0, np.pi)
        minor = np.sqrt(area / (np.pi * aspect))
        along = (cols - centre_c) * np.cos(angle) + (rows - centre_r) * np.sin(angle)
        across = (rows - centre_r) * np.cos(angle) - (cols - centre_c) * np.sin(angle)
        painted[(along / (aspect * minor)) ** 2 + (across / minor) ** 2 <= 1.0] = count + 1 + blob
    return painted, count + blobs


def _features_and_scores(labels: np.ndarray, gt_rows: np.ndarray, spurious: np.ndarray,
                         prototypes: FeaturePrototypes, config: SimulatedMaskConfig,
                         rng: np.random.Generator) -> tuple:
    """Return float32 unit features ``(N, D)`` and scores ``(N,)`` of masks 1..N.

    ``gt_rows`` (H, W) holds 0 for background and ``row + 1`` of the covered instance;
    ``spurious`` (N,) bool marks blobs that get a clutter vector.
    """
    masks, instances = int(labels.max(initial=0)), len(prototypes.instance_ids)
    overlap = np.bincount((labels.astype(np.int64) * (instances + 1) + gt_rows).ravel(),
                          minlength=(masks + 1) * (instances + 1))
    overlap = overlap.reshape(masks + 1, instances + 1)[1:, 1:].astype(np.float64)
    blended = overlap @ prototypes.instance_vectors.astype(np.float64)
    clutter = spurious | (overlap.sum(axis=1) == 0)
    clutter_weight = rng.uniform(*prototypes.category_weight_range, size=masks)
    clutter_vectors = _mix(np.broadcast_to(prototypes.common_direction, blended.shape),
                           clutter_weight, rng)
    anchors = np.where(clutter[:, None], clutter_vectors,
                       blended / np.maximum(np.linalg.norm(blended, axis=1, keepdims=True),
                                            1e-12))
    # Two masks with weights q1, q2 around one anchor have cosine ~ sqrt(q1 q2).
    quality = rng.uniform(config.same_object_cosine - config.cosine_jitter,
                          config.same_object_cosine + config.cosine_jitter, size=masks)
    features = _mix(anchors, quality, rng).astype(np.float32)
    mask_area = np.bincount(labels.ravel(), minlength=masks + 1)[1:]
    gt_area = np.bincount(gt_rows.ravel(), minlength=instances + 1)[1:]
    union = mask_area[:, None] + gt_area[None, :] - overlap
    best_iou = (overlap / np.maximum(union, 1)).max(axis=1, initial=0.0)
    scores = 0.6 + 0.4 * best_iou * rng.uniform(0.9, 1.0, size=masks)
    return features, scores.astype(np.float32)


def simulate_masks(gt_instances: np.ndarray, rng: np.random.Generator,
                   config: SimulatedMaskConfig, prototypes: FeaturePrototypes) -> MaskObservation:
    """Corrupt a ground-truth instance image into foundation-model-like masks.

    Args:
        gt_instances: uint16 ``(H, W)``, 0 = none, g >= 1 = ground-truth instance g.
        rng: the frame's random generator (the only source of randomness).
        config: noise levels and feature statistics.
        prototypes: the scene's vectors; must cover every id in ``gt_instances``.

    Returns:
        labels int32 ``(H, W)`` with contiguous ids 1..N, unit float32 features ``(N, D)``
        and float32 scores ``(N,)`` in [0.6, 1].

    """
    if gt_instances.ndim != 2 or gt_instances.dtype != np.uint16:
        raise ValueError(f'gt_instances must be uint16 (H, W), got {gt_instances.dtype} '
                         f'{gt_instances.shape}')
    if prototypes.instance_vectors.shape[1] != config.feature_dim:
        raise ValueError('prototypes were drawn for another feature_dim')
    present = np.flatnonzero(np.bincount(gt_instances.ravel())[1:]) + 1
    # Segments start as the instances present, numbered 1..count in id order.
    segment_lut = np.zeros(_MAX_LABEL + 1, dtype=np.int64)
    segment_lut[present] = np.arange(1, len(present) + 1)
    segments, count = segment_lut[gt_instances], len(present)
    gt_rows = np.r_[0, prototypes.instance_rows(present) + 1][segments]
    segments = _merge_touching(segments, count, config.under_segmentation_prob, rng)
    count = int(segments.max(initial=0))
    segments, count = _split_segments(segments, count, config, rng)
    detected = rng.random(count + 1) >= config.miss_prob
    present_ids = np.bincount(segments.ravel(), minlength=count + 1) > 0
    segments, detected_ids = _relabel(segments, detected & present_ids)
    count = len(detected_ids)
    segments = _perturb_boundaries(segments, count, config.boundary_radius_px, rng)
    segments, total = _add_spurious(segments, count, config, rng)
    sizes = np.bincount(segments.ravel(), minlength=total + 1)
    labels, old_ids = _relabel(segments, sizes >= config.min_mask_pixels)
    labels = labels.astype(np.int32)
    features, scores = _features_and_scores(labels, gt_rows, old_ids > count, prototypes,
                                            config, rng)
    return MaskObservation(labels=labels, features=features, scores=scores)


class SimulatedMaskGenerator:
    """Mask generator that corrupts each frame's ground-truth instance image.

    Implements ``perception.base.MaskGenerator``; the output depends only on ``seed`` and
    ``frame.frame_index``.
    """

    name = 'simulated'

    def __init__(self, instance_image_loader: Callable[[int], np.ndarray],
                 instance_categories: Mapping[int, int],
                 config: Optional[SimulatedMaskConfig] = None, seed: int = 0) -> None:
        """Keep the loader (frame index -> uint16 (H, W) instance image); draw prototypes.

        ``config`` None means the default simulated-noise suite ``SimulatedMaskConfig()``.
        """
        config = SimulatedMaskConfig() if config is None else config
        self._load = instance_image_loader
        self._config = config
        self._seed = int(seed)
        self.prototypes = make_feature_prototypes(instance_categories, config, self._seed)

    def generate(self, frame: RgbdFrame) -> MaskObservation:
        """Return the simulated masks of ``frame`` (needs ``frame.frame_index >= 0``)."""
        if frame.frame_index < 0:
            raise ValueError('SimulatedMaskGenerator needs frame.frame_index >= 0')
        gt_instances = self._load(frame.frame_index)
        if gt_instances.shape != frame.shape:
            raise ValueError(f'instance image {gt_instances.shape} does not match the depth '
                             f'image {frame.shape} of frame {frame.frame_index}')
        rng = np.random.default_rng([self._seed, _FRAME_STREAM, frame.frame_index])
        return simulate_masks(gt_instances, rng, self._config, self.prototypes)
