"""Weight-free RGB-D mask generator: regions bounded by depth jumps, concave creases and colour.

The default mask source when no network weights are available. One frame is segmented as
follows (all steps vectorized over pixels, numpy/scipy on the CPU):

1. back-project the depth image to camera-frame points and estimate per-pixel normals from a
   box-smoothed point image (normals oriented toward the camera);
2. compare every valid pixel with its neighbours ``edge_radius_px`` away (right and down; both
   pixels of a pair are marked) and mark an edge where
   - the depth jumps by more than ``max_relative_depth_jump`` of the nearer depth, or
   - the concavity ``(n_a - n_b) . (p_a - p_b) / |p_a - p_b|`` falls below that of a
     concave crease of ``max_concave_angle_deg`` (``-2 sin(angle / 2)``); convex creases such
     as box edges give positive values and are kept, so an object is not cut into its faces
     while its contact with the support is, or
   - the smoothed colours differ by more than ``color_edge_threshold`` (Euclidean, 0..255)
     where the geometry shows at least ``color_support_ratio`` of an edge (so texture on a
     smooth surface, such as a checkered floor, does not cut it);
   edge clusters under ``min_edge_cluster_px`` pixels (depth noise at range) are ignored;
3. label the 4-connected components of valid non-edge pixels, dissolve components smaller than
   ``absorb_below_px`` and give every unlabelled valid pixel within ``fill_max_px`` the label of
   its nearest region (edge bands and dissolved fragments merge into their neighbours);
4. drop regions under ``min_mask_pixels`` (CropFormer's 500 px filter) and number the rest
   1..N by decreasing area. A region's score is its share of pixels that were never edge or
   fragment pixels: well-delineated, compact regions score near 1.

This follows the depth-edge + concavity segmentation of Tateno et al., "Real-time and
scalable incremental segmentation on dense SLAM" (IROS 2015), with colour edges added.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from onlineanyseg_ros.core.config import spec, validate_config
from onlineanyseg_ros.core.types import MaskObservation, RgbdFrame


@dataclass(frozen=True)
class GeometricMaskConfig:
    """Parameters of the weight-free geometric mask generator."""

    normal_window_px: int = spec(7, 'Side of the box filter that smooths the point image '
                                 'before normals are taken (1 = no smoothing).', 1, 31)
    edge_radius_px: int = spec(4, 'Pixel offset between the two pixels of an edge test.', 1, 8)
    max_relative_depth_jump: float = spec(0.03, 'Depth jump, relative to the nearer depth, that '
                                          'makes an edge.', 0.001, 1.0)
    max_concave_angle_deg: float = spec(20.0, 'Normal angle across a concave crease that makes '
                                        'an edge (degrees).', 0.5, 180.0)
    min_edge_cluster_px: int = spec(20, 'Connected edge clusters smaller than this are noise and '
                                    'are ignored.', 0, 10 ** 6)
    edge_dilation_px: int = spec(0, 'Edges are grown by this many pixels before regions are '
                                 'labelled.', 0, 16)
    use_color_edges: bool = spec(True, 'Also cut where the colour changes sharply.')
    color_edge_threshold: float = spec(40.0, 'Euclidean RGB distance (0..255 scale) of the '
                                       '3x3-smoothed colours that makes an edge.', 1.0, 442.0)
    color_support_ratio: float = spec(0.5, 'A colour edge counts only where the depth jump or '
                                      'concavity reaches this share of its own threshold '
                                      '(texture on smooth surfaces is ignored; 0 = colour '
                                      'alone cuts).', 0.0, 1.0)
    absorb_below_px: int = spec(100, 'Regions smaller than this dissolve into their neighbours.',
                                0, 10 ** 7)
    fill_max_px: int = spec(8, 'Unlabelled valid pixels this close to a region join it.',
                            0, 1000)
    min_mask_pixels: int = spec(500, 'Regions smaller than this after filling are dropped.',
                                1, 10 ** 7)

    def __post_init__(self) -> None:
        """Check every field's type and range."""
        validate_config(self)


def camera_points(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Back-project ``depth`` (float32 (H, W) metres) to float32 (H, W, 3) camera-frame points."""
    height, width = depth.shape
    u = np.arange(width, dtype=np.float32)[None, :]
    v = np.arange(height, dtype=np.float32)[:, None]
    x = (u - np.float32(K[0, 2])) / np.float32(K[0, 0]) * depth
    y = (v - np.float32(K[1, 2])) / np.float32(K[1, 1]) * depth
    return np.stack([x, y, depth], axis=-1)


def estimate_normals(points: np.ndarray, valid: np.ndarray, window_px: int) -> np.ndarray:
    """Return float32 (H, W, 3) unit normals facing the camera (zero where undefined).

    ``points`` is float32 (H, W, 3) in the camera frame, ``valid`` bool (H, W). The point
    image is averaged over valid pixels of a ``window_px`` box (normalized convolution) and
    the normal is the cross product of its central differences.
    """
    weight = valid.astype(np.float32)
    if window_px > 1:
        size = (window_px, window_px)
        count = ndimage.uniform_filter(weight, size=size, mode='nearest')
        smoothed = np.stack([ndimage.uniform_filter(points[..., c] * weight, size=size,
                                                    mode='nearest') for c in range(3)], axis=-1)
        smoothed /= np.maximum(count, 1e-6)[..., None]
    else:
        smoothed = points
    d_u = np.zeros_like(smoothed)
    d_v = np.zeros_like(smoothed)
    d_u[:, 1:-1] = smoothed[:, 2:] - smoothed[:, :-2]
    d_v[1:-1] = smoothed[2:] - smoothed[:-2]
    normals = np.cross(d_u, d_v)
    norm = np.linalg.norm(normals, axis=-1, keepdims=True)
    normals = np.where(norm > 1e-12, normals / np.maximum(norm, 1e-12), 0.0).astype(np.float32)
    # Orient toward the camera (origin): n . p < 0.
    facing_away = np.einsum('hwc,hwc->hw', normals, points) > 0
    normals[facing_away] *= -1.0
    normals[~valid] = 0.0
    return normals


def _pair_slices(offset_v: int, offset_u: int):
    """Return slices (a, b) selecting pixel pairs ``b = a + (offset_v, offset_u)``."""
    def span(offset: int, first: bool) -> slice:
        if offset == 0:
            return slice(None)
        return slice(None, -offset) if first else slice(offset, None)
    return ((span(offset_v, True), span(offset_u, True)),
            (span(offset_v, False), span(offset_u, False)))


def _geometric_strength(depth: np.ndarray, points: np.ndarray, normals: np.ndarray,
                        a: tuple, b: tuple, config: GeometricMaskConfig) -> np.ndarray:
    """Return float32 edge strength of the pixel pairs (a, b): >= 1 means a geometric edge.

    The strength is the larger of the depth jump over ``max_relative_depth_jump`` times the
    nearer depth and the concavity over the concavity of a ``max_concave_angle_deg`` crease.
    """
    z_a, z_b = depth[a], depth[b]
    jump = np.abs(z_a - z_b) / (config.max_relative_depth_jump * np.maximum(
        np.minimum(z_a, z_b), 1e-6))
    step = points[a] - points[b]
    step /= np.maximum(np.linalg.norm(step, axis=-1, keepdims=True), 1e-9)
    # Concavity (n_a - n_b) . (p_a - p_b) / |p_a - p_b| is -2 sin(angle / 2) across a
    # symmetric concave crease and positive across a convex one; noise turns the normals in
    # random directions and projects less onto the step, so this is steadier than the angle.
    concavity = np.einsum('hwc,hwc->hw', normals[a] - normals[b], step)
    concave_limit = 2.0 * np.sin(np.deg2rad(config.max_concave_angle_deg) / 2.0)
    return np.maximum(jump, -concavity / np.float32(concave_limit))


def edge_map(frame: RgbdFrame, config: GeometricMaskConfig) -> np.ndarray:
    """Return bool (H, W): pixels on a depth jump, a concave crease or a colour edge.

    Invalid-depth pixels (depth 0) are never edges; they are excluded from regions elsewhere.
    """
    depth = frame.depth
    valid = depth > 0
    points = camera_points(depth, frame.K)
    normals = estimate_normals(points, valid, config.normal_window_px)
    color = None
    if config.use_color_edges:
        color = ndimage.uniform_filter(frame.color.astype(np.float32), size=(3, 3, 1),
                                       mode='nearest')
    edges = np.zeros(depth.shape, dtype=bool)
    radius = config.edge_radius_px
    for offset in ((0, radius), (radius, 0)):
        a, b = _pair_slices(*offset)
        strength = _geometric_strength(depth, points, normals, a, b, config)
        cut = strength >= 1.0
        if color is not None:
            color_step = color[a] - color[b]
            color_edge = (np.einsum('hwc,hwc->hw', color_step, color_step)
                          > np.float32(config.color_edge_threshold ** 2))
            cut |= color_edge & (strength >= config.color_support_ratio)
        cut &= valid[a] & valid[b]
        edges[a] |= cut
        edges[b] |= cut
    if config.min_edge_cluster_px > 1:
        # Depth noise at range fires scattered single edges; creases and outlines are long
        # connected curves, so small 8-connected clusters are dropped.
        clusters, count = ndimage.label(edges, structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(clusters.ravel(), minlength=count + 1)
        small = sizes < config.min_edge_cluster_px
        small[0] = True
        edges[small[clusters]] = False
    if config.edge_dilation_px > 0:
        # Closes pinholes in creases through which two surfaces would otherwise leak together.
        edges = ndimage.binary_dilation(edges, iterations=config.edge_dilation_px)
    return edges


def _fill_from_nearest(labels: np.ndarray, fillable: np.ndarray, max_distance: int) -> None:
    """Give ``fillable`` pixels within ``max_distance`` the label of the nearest region."""
    if max_distance == 0 or not fillable.any() or not labels.any():
        return
    distance, (rows, cols) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    take = fillable & (distance <= max_distance)
    labels[take] = labels[rows[take], cols[take]]


class GeometricMaskGenerator:
    """Weight-free mask generator (see the module docstring); implements ``MaskGenerator``."""

    name = 'geometric'

    def __init__(self, config: GeometricMaskConfig = GeometricMaskConfig()) -> None:
        """Keep the validated ``config``."""
        self.config = config

    def generate(self, frame: RgbdFrame) -> MaskObservation:
        """Segment ``frame``; labels int32 (H, W) 1..N by decreasing area, scores float32 (N,)."""
        config = self.config
        valid = frame.depth > 0
        core = valid & ~edge_map(frame, config)
        labels, count = ndimage.label(core)
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        fragment = areas < config.absorb_below_px
        fragment[0] = True
        labels[fragment[labels]] = 0
        core_labels = labels.copy()
        _fill_from_nearest(labels, valid & (labels == 0), config.fill_max_px)

        areas = np.bincount(labels.ravel(), minlength=count + 1)
        core_areas = np.bincount(core_labels.ravel(), minlength=count + 1)
        areas[0] = 0
        kept = np.flatnonzero(areas >= config.min_mask_pixels)
        kept = kept[np.argsort(-areas[kept], kind='stable')]
        relabel = np.zeros(count + 1, dtype=np.int32)
        relabel[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
        scores = (core_areas[kept] / areas[kept]).astype(np.float32)
        return MaskObservation(labels=relabel[labels], features=None, scores=scores)
