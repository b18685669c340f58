"""Class-agnostic instance AP (AP, AP50, AP25) with the ScanNet benchmark matching.

The protocol is the reference's (method.md section 6): predicted instances live on our
reconstructed cloud; each GT vertex takes the instance of its nearest covered point within
``match_distance_m``; IoUs are counted on GT vertices; matching, ignore rules and the
precision-recall integration follow ScanNet's ``evaluate_semantic_instance.py``.

Deliberate differences to the reference:
- a GT instance is keyed by its whole label value ``class * 1000 + instance`` instead of by
  ``instance`` alone, so two instances that share an instance number under different classes
  stay apart (ScanNet instance numbers are unique per scene, so nothing changes there);
- a vertex with a class but instance number 0 is void; the reference would pool all such
  vertices into one GT instance ``1000``;
- ICP alignment of GT to the prediction is off by default: our maps are built from the GT
  poses, so they already live in the GT frame, and ICP could only pull a good map towards a
  local optimum. ``ApConfig(icp=True)`` runs a small point-to-point ICP like the reference's.
"""

from dataclasses import dataclass
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.spatial import cKDTree

from onlineanyseg_ros.core.config import spec, validate_config
from onlineanyseg_ros.data.io import read_label_file, read_ply

LOGGER = logging.getLogger(__name__)

# ScanNet's overlap thresholds: AP averages the first nine, AP50 and AP25 pick one each.
AP_OVERLAPS = tuple(float(t) for t in np.arange(0.5, 0.95, 0.05))
OVERLAPS = AP_OVERLAPS + (0.25,)
# GT label value = class_id * 1000 + instance number (ScanNet / MaskClustering layout).
LABEL_DIVISOR = 1000


@dataclass(frozen=True)
class ApConfig:
    """Thresholds of the evaluation protocol (defaults = the reference's)."""

    match_distance_m: float = spec(0.15, 'A GT vertex takes the nearest instance point closer '
                                   'than this (exclusive).', 0.0, 100.0)
    keep_gt_ratio_min: float = spec(0.75, 'Keep a prediction if its GT-vertex count over its '
                                    'point count reaches this...', 0.0, 1000.0)
    keep_min_gt_vertices: int = spec(100, '...or if it covers more GT vertices than this.',
                                     0, 10 ** 9)
    min_region_vertices: int = spec(100, 'GT instances and predictions with fewer GT vertices '
                                    'are ignored / skipped (ScanNet min_region_sizes).',
                                    0, 10 ** 9)
    icp: bool = spec(False, 'Align GT to the prediction with point-to-point ICP first.')
    icp_max_distance_m: float = spec(0.05, 'ICP correspondence distance.', 1e-6, 100.0)
    icp_max_iterations: int = spec(30, 'ICP iteration cap.', 1, 10000)

    def __post_init__(self) -> None:
        """Check every field's type and range."""
        validate_config(self)


@dataclass(frozen=True)
class SceneMatches:
    """One scene's GT instances, kept predictions and their overlaps, counted on GT vertices.

    ``G`` GT instances (small ones included: they decide what is ignored) and ``P`` kept
    predictions, in ascending id order (the order ScanNet's greedy matching visits them).
    """

    name: str
    gt_labels: np.ndarray           # int64 (G,) label value of each GT instance
    gt_vertex_counts: np.ndarray    # int64 (G,) GT vertices of each GT instance
    pred_ids: np.ndarray            # int64 (P,) instance id in the prediction (1-based)
    pred_scores: np.ndarray         # float64 (P,) confidence
    pred_vertex_counts: np.ndarray  # int64 (P,) GT vertices mapped to the prediction
    pred_void_counts: np.ndarray    # int64 (P,) of those, vertices on void GT
    intersections: np.ndarray       # int64 (G, P) shared GT vertices
    num_input_instances: int        # instances in the prediction before any filtering


def decode_gt_labels(gt_labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Split label values into class-agnostic GT instances.

    ``gt_labels``: int (V,) values ``class * 1000 + instance``. Class 0 is void; a vertex
    with a class but instance number 0 belongs to no instance and counts as void as well.
    Returns (unique instance label values int64 (G,), per-vertex instance index int64 (V,),
    -1 on void).
    """
    labels = np.asarray(gt_labels, dtype=np.int64)
    if labels.ndim != 1 or (labels.size and labels.min() < 0):
        raise ValueError('GT labels must be a 1-D array of non-negative integers')
    is_instance = (labels // LABEL_DIVISOR > 0) & (labels % LABEL_DIVISOR != 0)
    unique_labels, inverse = np.unique(labels[is_instance], return_inverse=True)
    gt_index = np.full(labels.shape, -1, dtype=np.int64)
    gt_index[is_instance] = inverse
    return unique_labels, gt_index


def icp_point_to_point(source: np.ndarray, target: np.ndarray, max_distance_m: float,
                       max_iterations: int = 30, tolerance: float = 1e-6) -> np.ndarray:
    """Return the rigid float64 (4, 4) transform that moves ``source`` onto ``target``.

    ``source`` (S, 3) and ``target`` (T, 3) are metres in any common frame. Plain
    point-to-point ICP from the identity: nearest neighbours closer than ``max_distance_m``,
    Kabsch update, stop when fitness and inlier RMSE change less than ``tolerance`` (the
    convergence test of Open3D's ``registration_icp`` that the reference calls).
    """
    tree = cKDTree(np.asarray(target, dtype=np.float64))
    target = tree.data
    moved = np.asarray(source, dtype=np.float64).copy()
    transform = np.eye(4)
    previous = None
    for _ in range(max_iterations):
        distances, nearest = tree.query(moved, distance_upper_bound=max_distance_m,
                                        workers=-1)
        found = np.isfinite(distances)
        if found.sum() < 3:
            break
        quality = (found.mean(), np.sqrt(np.mean(distances[found] ** 2)))
        if previous is not None and max(abs(quality[0] - previous[0]),
                                        abs(quality[1] - previous[1])) < tolerance:
            break
        previous = quality
        step = _kabsch(moved[found], target[nearest[found]])
        moved = moved @ step[:3, :3].T + step[:3, 3]
        transform = step @ transform
    return transform


def _kabsch(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Return the float64 (4, 4) least-squares rigid transform of paired (K, 3) points."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    covariance = (source - source_mean).T @ (target - target_mean)
    u, _, vt = np.linalg.svd(covariance)
    # The sign fix keeps a proper rotation when the best orthogonal fit is a reflection.
    reflection = np.diag([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T))])
    rotation = vt.T @ reflection @ u.T
    transform = np.eye(4)
    transform[:3, :3] = rotation
    transform[:3, 3] = target_mean - rotation @ source_mean
    return transform


def map_predictions_to_gt(pred_points: np.ndarray, pred_instance_ids: np.ndarray,
                          gt_points: np.ndarray, max_distance_m: float) -> np.ndarray:
    """Give every GT vertex the instance id of its nearest covered predicted point.

    ``pred_points`` float (N, 3) and ``gt_points`` float (V, 3) in metres, same frame;
    ``pred_instance_ids`` int (N,), 0 = no instance. Only points with an instance are
    candidates, and only those closer than ``max_distance_m``. Returns int64 (V,), 0 = none.
    """
    covered = pred_instance_ids > 0
    vertex_ids = np.zeros(len(gt_points), dtype=np.int64)
    if not covered.any() or len(gt_points) == 0:
        return vertex_ids
    tree = cKDTree(np.asarray(pred_points[covered], dtype=np.float64))
    distances, nearest = tree.query(np.asarray(gt_points, dtype=np.float64),
                                    distance_upper_bound=max_distance_m, workers=-1)
    found = np.isfinite(distances)
    vertex_ids[found] = pred_instance_ids[covered][nearest[found]]
    return vertex_ids


def _check_scene_inputs(pred_points: np.ndarray, pred_instance_ids: np.ndarray,
                        pred_scores: np.ndarray, gt_points: np.ndarray,
                        gt_labels: np.ndarray) -> None:
    """Raise ValueError with one sentence when the arrays do not fit together."""
    if pred_points.ndim != 2 or pred_points.shape[1] != 3:
        raise ValueError(f'pred_points must be (N, 3), got {pred_points.shape}')
    if pred_instance_ids.shape != (len(pred_points),):
        raise ValueError(f'pred_instance_ids must be ({len(pred_points)},), '
                         f'got {pred_instance_ids.shape}')
    if pred_scores.ndim != 1 or not np.all(np.isfinite(pred_scores)):
        raise ValueError('pred_scores must be a 1-D array of finite confidences')
    if pred_instance_ids.size and (pred_instance_ids.min() < 0
                                   or pred_instance_ids.max() > len(pred_scores)):
        raise ValueError(f'pred_instance_ids must lie in [0, {len(pred_scores)}] '
                         '(one score per instance)')
    if gt_points.ndim != 2 or gt_points.shape[1] != 3:
        raise ValueError(f'gt_points must be (V, 3), got {gt_points.shape}')
    if gt_labels.shape != (len(gt_points),):
        raise ValueError(f'gt_labels must hold one label per GT vertex ({len(gt_points)}), '
                         f'got {gt_labels.shape}')


def _kept_instances(pred_instance_ids: np.ndarray, vertex_pred: np.ndarray, num_ids: int,
                    config: ApConfig) -> Tuple[np.ndarray, np.ndarray]:
    """Apply the reference's keep rule and ScanNet's size rule to the mapped instances.

    ``pred_instance_ids`` int64 (N,) per predicted point and ``vertex_pred`` int64 (V,) per
    GT vertex, both 0 = none. Returns (kept ids ascending int64 (P,), GT-vertex count of
    every id 0..num_ids-1 int64 (num_ids,)).
    """
    point_counts = np.bincount(pred_instance_ids, minlength=num_ids)
    vertex_counts = np.bincount(vertex_pred, minlength=num_ids)
    with np.errstate(divide='ignore', invalid='ignore'):
        ratio = vertex_counts / point_counts
    kept = (point_counts > 0) & ((ratio >= config.keep_gt_ratio_min)
                                 | (vertex_counts > config.keep_min_gt_vertices))
    kept &= vertex_counts >= config.min_region_vertices
    kept[0] = False
    return np.flatnonzero(kept), vertex_counts


def evaluate_scene(pred_points: np.ndarray, pred_instance_ids: np.ndarray,
                   pred_scores: np.ndarray, gt_points: np.ndarray, gt_labels: np.ndarray,
                   config: ApConfig = ApConfig(), name: str = 'scene') -> SceneMatches:
    """Map one scene's predicted instances onto its GT vertices and count the overlaps.

    ``pred_points`` float (N, 3) world-frame metres, ``pred_instance_ids`` int (N,) with 0 =
    none and ``i`` = instance ``i`` whose confidence is ``pred_scores[i - 1]`` (float (I,));
    ``gt_points`` float (V, 3) GT vertices in metres, ``gt_labels`` int (V,) label values.
    """
    pred_points, gt_points = np.asarray(pred_points), np.asarray(gt_points)
    if not np.issubdtype(np.asarray(pred_instance_ids).dtype, np.integer):
        raise ValueError('pred_instance_ids must be integers')
    pred_instance_ids = np.asarray(pred_instance_ids).astype(np.int64)
    pred_scores = np.asarray(pred_scores, dtype=np.float64)
    gt_labels = np.asarray(gt_labels)
    _check_scene_inputs(pred_points, pred_instance_ids, pred_scores, gt_points, gt_labels)
    if config.icp and (pred_instance_ids > 0).any():
        transform = icp_point_to_point(gt_points, pred_points, config.icp_max_distance_m,
                                       config.icp_max_iterations)
        gt_points = gt_points @ transform[:3, :3].T + transform[:3, 3]
    vertex_pred = map_predictions_to_gt(pred_points, pred_instance_ids, gt_points,
                                        config.match_distance_m)
    num_ids = len(pred_scores) + 1
    pred_ids, vertex_counts = _kept_instances(pred_instance_ids, vertex_pred, num_ids, config)
    # Dense column of each kept id, -1 for dropped ids and for "no instance".
    column = np.full(num_ids, -1, dtype=np.int64)
    column[pred_ids] = np.arange(len(pred_ids))
    vertex_column = column[vertex_pred]

    gt_unique, gt_index = decode_gt_labels(gt_labels)
    num_gt, num_pred = len(gt_unique), len(pred_ids)
    both = (gt_index >= 0) & (vertex_column >= 0)
    intersections = np.bincount(gt_index[both] * num_pred + vertex_column[both],
                                minlength=num_gt * num_pred).reshape(num_gt, num_pred)
    on_void = (gt_index < 0) & (vertex_column >= 0)
    return SceneMatches(
        name=name, gt_labels=gt_unique,
        gt_vertex_counts=np.bincount(gt_index[gt_index >= 0], minlength=num_gt),
        pred_ids=pred_ids, pred_scores=pred_scores[pred_ids - 1],
        pred_vertex_counts=vertex_counts[pred_ids],
        pred_void_counts=np.bincount(vertex_column[on_void], minlength=num_pred),
        intersections=intersections, num_input_instances=len(pred_scores))


def _scene_outcomes(scene: SceneMatches, threshold: float, min_region_vertices: int
                    ) -> Tuple[np.ndarray, np.ndarray, int]:
    """Return one scene's ScanNet outcomes at one overlap threshold.

    Returns (is_true_positive float (K,), confidence float (K,), unmatched GT count). The
    greedy pass reproduces ScanNet exactly: GT instances in order, each takes the first
    unvisited prediction above the threshold; further ones above it become false positives
    scored with the lower confidence, and the GT keeps the higher one (a duplicate stays
    unvisited, so a later GT may still take it, as in ScanNet).
    """
    counts = scene.gt_vertex_counts[:, None] + scene.pred_vertex_counts[None, :]
    iou = scene.intersections / np.maximum(counts - scene.intersections, 1)
    above = iou > threshold
    visited = np.zeros(len(scene.pred_ids), dtype=bool)
    is_true, confidence = [], []
    unmatched_gt = 0
    for gt in np.flatnonzero(scene.gt_vertex_counts >= min_region_vertices):
        candidates = np.flatnonzero(above[gt] & ~visited)
        if len(candidates) == 0:
            unmatched_gt += 1
            continue
        visited[candidates[0]] = True
        best_so_far = np.maximum.accumulate(scene.pred_scores[candidates])
        duplicates = np.minimum(best_so_far[:-1], scene.pred_scores[candidates[1:]])
        is_true.extend([1.0] + [0.0] * len(duplicates))
        confidence.extend([best_so_far[-1]] + duplicates.tolist())
    # A prediction with no GT above the threshold is a false positive unless more than the
    # threshold's share of it lies on void or on ignored (small) GT instances.
    small_gt = scene.gt_vertex_counts < min_region_vertices
    ignored = scene.pred_void_counts + scene.intersections[small_gt].sum(axis=0)
    vertex_counts = np.maximum(scene.pred_vertex_counts, 1)
    false_positive = ~above.any(axis=0) & (ignored / vertex_counts <= threshold)
    is_true.extend([0.0] * int(false_positive.sum()))
    confidence.extend(scene.pred_scores[false_positive].tolist())
    return np.asarray(is_true), np.asarray(confidence, dtype=np.float64), unmatched_gt


def _curve_average_precision(is_true: np.ndarray, confidence: np.ndarray,
                             unmatched_gt: int) -> Tuple[float, float, float]:
    """Integrate ScanNet's precision-recall curve; return (AP, precision, recall).

    One curve point per distinct confidence (everything scored at least that much is
    accepted) plus the artificial point (recall 0, precision 1); each precision is weighted
    by half the recall span between its neighbours. Precision and recall are those of the
    lowest threshold, i.e. with every prediction accepted.
    """
    order = np.argsort(confidence, kind='stable')
    true_sorted = is_true[order]
    cumulative = np.cumsum(true_sorted)
    _, first = np.unique(confidence[order], return_index=True)
    below = np.where(first > 0, cumulative[first - 1], 0.0)
    true_positives = cumulative[-1] - below
    false_positives = len(true_sorted) - first - true_positives
    false_negatives = below + unmatched_gt
    precision = np.append(true_positives / (true_positives + false_positives), 1.0)
    recall = np.append(true_positives / (true_positives + false_negatives), 0.0)
    padded = np.concatenate([recall[:1], recall, [0.0]])
    step_widths = 0.5 * (padded[:-2] - padded[2:])
    return float(precision @ step_widths), float(precision[0]), float(recall[0])


def average_precision(scenes: Sequence[SceneMatches], config: ApConfig = ApConfig()
                      ) -> Dict[str, object]:
    """Pool scenes into one PR curve per overlap threshold and return the AP summary.

    Returns ``ap`` (mean over 0.50..0.90), ``ap50``, ``ap25``, ``per_threshold`` (``'0.50'``
    -> {ap, precision, recall}), ``num_gt`` (GT instances with enough vertices) and
    ``num_pred`` (kept predictions). AP is NaN without GT, 0 with GT but no predictions.
    """
    num_gt = int(sum((s.gt_vertex_counts >= config.min_region_vertices).sum() for s in scenes))
    num_pred = int(sum(len(s.pred_ids) for s in scenes))
    per_threshold = {}
    for threshold in OVERLAPS:
        outcomes = [_scene_outcomes(s, threshold, config.min_region_vertices) for s in scenes]
        is_true = np.concatenate([o[0] for o in outcomes] + [np.empty(0)])
        confidence = np.concatenate([o[1] for o in outcomes] + [np.empty(0)])
        unmatched_gt = sum(o[2] for o in outcomes)
        if num_gt == 0:
            result = (float('nan'),) * 3
        elif len(is_true) == 0:
            result = (0.0, float('nan'), 0.0)
        else:
            result = _curve_average_precision(is_true, confidence, unmatched_gt)
        per_threshold[f'{threshold:.2f}'] = dict(zip(('ap', 'precision', 'recall'), result))
    ap_values = [per_threshold[f'{t:.2f}']['ap'] for t in AP_OVERLAPS]
    return {'ap': float(np.mean(ap_values)), 'ap50': per_threshold['0.50']['ap'],
            'ap25': per_threshold['0.25']['ap'], 'per_threshold': per_threshold,
            'num_gt': num_gt, 'num_pred': num_pred}


def read_gt_labels(path: Path, num_vertices: int) -> np.ndarray:
    """Read a label file with one integer per GT vertex; return int64 (num_vertices,)."""
    labels = read_label_file(path)
    if len(labels) != num_vertices:
        raise ValueError(f'{path}: {len(labels)} labels for {num_vertices} GT vertices')
    return labels


def load_predictions(pred_dir: Path) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``pred_dir/instances.npz``; return points f32 (N,3), ids int32 (N,), scores (I,)."""
    path = Path(pred_dir) / 'instances.npz'
    if not path.is_file():
        raise FileNotFoundError(f'no prediction file {path}')
    with np.load(path) as data:
        missing = [key for key in ('points', 'instance_ids', 'scores') if key not in data]
        if missing:
            raise ValueError(f'{path}: missing array(s) {", ".join(missing)}')
        return data['points'], data['instance_ids'], data['scores']


def evaluate_paths(pred_dir: Path, gt_vertices: Path, gt_labels: Path,
                   config: ApConfig = ApConfig(), name: Optional[str] = None) -> SceneMatches:
    """Evaluate one prediction directory against a GT PLY and its label file."""
    points, instance_ids, scores = load_predictions(pred_dir)
    gt_points = read_ply(gt_vertices).points
    labels = read_gt_labels(gt_labels, len(gt_points))
    return evaluate_scene(points, instance_ids, scores, gt_points, labels, config,
                          name=name or Path(pred_dir).name)


def evaluate_dirs(pred_root: Path, gt_root: Path, config: ApConfig = ApConfig(),
                  scenes: Optional[Sequence[str]] = None) -> List[SceneMatches]:
    """Evaluate every scene ``<name>`` that has both a prediction and GT, in name order.

    Layout: ``pred_root/<name>/instances.npz``, ``gt_root/<name>/<name>_vh_clean_2.ply`` and
    ``gt_root/<name>/<name>.txt``. Without ``scenes``, every prediction directory is a scene;
    one without GT is skipped with a warning. Named ``scenes`` must all be complete.
    """
    pred_root, gt_root = Path(pred_root), Path(gt_root)
    names = sorted(scenes) if scenes else sorted(
        p.parent.name for p in pred_root.glob('*/instances.npz'))
    results = []
    for name in names:
        ply, labels = gt_root / name / f'{name}_vh_clean_2.ply', gt_root / name / f'{name}.txt'
        if not scenes and not (ply.is_file() and labels.is_file()):
            LOGGER.warning('scene %s: no GT under %s, skipped', name, gt_root / name)
            continue
        results.append(evaluate_paths(pred_root / name, ply, labels, config, name))
    if not results:
        raise ValueError(f'no scene with both {pred_root}/<name>/instances.npz and GT in '
                         f'{gt_root}')
    return results
