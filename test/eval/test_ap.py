"""Hand-computed checks of the class-agnostic ScanNet AP protocol (eval/ap.py).

Scenes are built from patches: each patch is a flat 5 cm grid of GT vertices, more than
1 m away from every other patch, so the 0.15 m vertex mapping never crosses patches. The
predicted cloud holds the same points; a patch's points carry a predicted instance id or 0.

ScanNet's curve, used in the arithmetic below: one point (precision p_i, recall r_i) per
distinct confidence (everything scored at least that much accepted), then the artificial
point (p=1, r=0); AP = sum_i p_i * (r_{i-1} - r_{i+1}) / 2 with r_{-1} = r_0 and 0 past the
end. With one confidence for all predictions this is AP = r * (1 + p) / 2, and with every
precision 1 it telescopes to AP = r_0.
"""

import numpy as np
import pytest

from onlineanyseg_ros.eval.ap import (
    ApConfig, average_precision, decode_gt_labels, evaluate_scene, icp_point_to_point,
    map_predictions_to_gt)

SPACING_M = 0.05
PATCH_STRIDE_M = 2.0


def patch(index, count, z_m=0.0):
    """Return float64 (count, 3) grid points (20 per row, 5 cm apart) of patch ``index``."""
    k = np.arange(count)
    return np.stack([index * PATCH_STRIDE_M + (k % 20) * SPACING_M, (k // 20) * SPACING_M,
                     np.full(count, z_m)], axis=1)


def build_scene(parts, scores, pred_offset_m=0.0):
    """Build evaluate_scene's inputs from (GT label, predicted id or 0, vertex count) parts.

    The predicted cloud repeats every GT point (raised by ``pred_offset_m``); points of
    parts with predicted id 0 stay in the cloud without an instance.
    """
    gt_points, gt_labels, pred_ids = [], [], []
    for index, (label, pred_id, count) in enumerate(parts):
        gt_points.append(patch(index, count))
        gt_labels.append(np.full(count, label, dtype=np.int64))
        pred_ids.append(np.full(count, pred_id, dtype=np.int32))
    gt_points = np.concatenate(gt_points)
    return {'pred_points': (gt_points + [0.0, 0.0, pred_offset_m]).astype(np.float32),
            'pred_instance_ids': np.concatenate(pred_ids),
            'pred_scores': np.asarray(scores, dtype=np.float32),
            'gt_points': gt_points, 'gt_labels': np.concatenate(gt_labels)}


def evaluate(parts, scores, config=ApConfig(), **kwargs):
    """Evaluate one built scene and return average_precision's summary."""
    return average_precision([evaluate_scene(**build_scene(parts, scores, **kwargs),
                                             config=config)], config)


def test_perfect_prediction_scores_one():
    result = evaluate([(1001, 1, 200), (2002, 2, 300), (3003, 3, 150)], [0.9, 0.8, 0.7])
    assert result['ap'] == pytest.approx(1.0)
    assert result['ap50'] == pytest.approx(1.0)
    assert result['ap25'] == pytest.approx(1.0)
    assert (result['num_gt'], result['num_pred']) == (3, 3)


def test_missed_instance_with_equal_scores():
    # 4 GT instances, 3 found exactly, every score 1.0: one curve point p = 1, r = 3/4,
    # so AP = r * (1 + p) / 2 = 0.75 at every threshold.
    parts = [(1001, 1, 200), (1002, 2, 200), (1003, 3, 200), (1004, 0, 200)]
    result = evaluate(parts, [1.0, 1.0, 1.0])
    for threshold in (0.25, 0.5, 0.9):
        assert result['per_threshold'][f'{threshold:.2f}']['recall'] == pytest.approx(0.75)
        assert result['per_threshold'][f'{threshold:.2f}']['precision'] == pytest.approx(1.0)
    assert (result['ap'], result['ap50'], result['ap25']) == pytest.approx((0.75,) * 3)


def test_missed_instance_with_ranked_scores():
    # Same scene, scores 0.9 > 0.8 > 0.7: recalls 3/4, 2/4, 1/4 at precision 1 everywhere,
    # so AP = r_0 = 0.75 again (precision 1 makes the curve a full rectangle).
    parts = [(1001, 1, 200), (1002, 2, 200), (1003, 3, 200), (1004, 0, 200)]
    assert evaluate(parts, [0.9, 0.8, 0.7])['ap50'] == pytest.approx(0.75)


# GT A and B found exactly (0.9, 0.8); a third prediction covers 150 of the 1000 vertices
# of GT C (IoU 0.15 < 0.25: a false positive at every threshold, and C is never found).
FALSE_POSITIVE_PARTS = [(1001, 1, 200), (1002, 2, 200), (1003, 3, 150), (1003, 0, 850)]


def test_false_positive_ranked_below_true_positives():
    # Scores 0.5 (F) < 0.8 (T) < 0.9 (T); 3 GT, C always missed (fn += 1).
    # At >= 0.5: tp 2, fp 1 -> p 2/3, r 2/3; >= 0.8: p 1, r 2/3; >= 0.9: p 1, r 1/3; (1, 0).
    # Widths: (2/3 - 2/3)/2 = 0, (2/3 - 1/3)/2 = 1/6, (2/3 - 0)/2 = 1/3, (1/3 - 0)/2 = 1/6.
    # AP = 2/3 * 0 + 1 * 1/6 + 1 * 1/3 + 1 * 1/6 = 2/3.
    result = evaluate(FALSE_POSITIVE_PARTS, [0.9, 0.8, 0.5])
    assert result['ap'] == pytest.approx(2 / 3)
    assert result['ap25'] == pytest.approx(2 / 3)
    assert result['per_threshold']['0.50']['precision'] == pytest.approx(2 / 3)


def test_false_positive_ranked_above_true_positives():
    # Scores 0.8 (T) < 0.9 (T) < 0.95 (F).
    # At >= 0.8: p 2/3, r 2/3; >= 0.9: tp 1, fp 1 -> p 1/2, r 1/3; >= 0.95: p 0, r 0; (1, 0).
    # Widths: (2/3 - 1/3)/2 = 1/6, (2/3 - 0)/2 = 1/3, (1/3 - 0)/2 = 1/6, (0 - 0)/2 = 0.
    # AP = 2/3 * 1/6 + 1/2 * 1/3 + 0 * 1/6 + 1 * 0 = 1/9 + 1/6 = 5/18.
    result = evaluate(FALSE_POSITIVE_PARTS, [0.9, 0.8, 0.95])
    assert result['ap'] == pytest.approx(5 / 18)
    assert result['ap50'] == pytest.approx(5 / 18)


def test_half_overlap_counts_at_025_but_not_at_050():
    # GT A has 200 vertices in two far-apart halves; the prediction covers one half exactly:
    # IoU = 100 / 200 = 0.5, which is not strictly above 0.5 but is above 0.25.
    # At 0.25: p = r = 1 -> AP 1. At >= 0.5: A missed and the prediction is a false
    # positive (nothing ignored) -> tp = 0 -> AP 0.
    result = evaluate([(1001, 1, 100), (1001, 0, 100)], [0.9])
    assert result['ap25'] == pytest.approx(1.0)
    assert result['ap50'] == 0.0
    assert result['ap'] == 0.0


def test_small_gt_instances_are_ignored():
    # GT S (60 vertices < 100) is ignored: recall counts only A, and the prediction on S has
    # only 60 GT vertices, so it is skipped instead of being a false positive.
    result = evaluate([(1001, 1, 200), (1002, 2, 60)], [0.9, 0.95])
    assert (result['num_gt'], result['num_pred']) == (1, 1)
    assert result['ap'] == pytest.approx(1.0)


def test_prediction_on_small_gt_instances_is_not_a_false_positive():
    # One prediction spans two small GT instances (90 + 90 vertices): IoU 90 / 180 = 0.5
    # with each, so no match above 0.5; but all of it lies on ignored GT (share 1 > any
    # threshold), so it is no false positive and A's AP stays 1 everywhere.
    result = evaluate([(1001, 1, 200), (1002, 2, 90), (1003, 2, 90)], [0.9, 0.95])
    assert result['num_pred'] == 2
    assert result['ap'] == pytest.approx(1.0)
    assert result['ap25'] == pytest.approx(1.0)


def test_void_share_must_exceed_the_threshold_to_excuse_a_prediction():
    # Prediction Q (score 0.95): 150 void vertices + 150 of GT C's 1000 (IoU 150/1150).
    # GT A found exactly at 0.9; C missed. Q's void share is 0.5.
    # At 0.25: 0.5 > 0.25 -> Q ignored; one point p 1, r 1/2 -> AP = 1/2 * 2 / 2 = 1/2.
    # At every t in 0.5..0.9: 0.5 is not > t -> Q is a false positive ranked above A:
    # at >= 0.9 p 1/2, r 1/2; at >= 0.95 p 0, r 0; then (1, 0).
    # Widths (1/2 - 0)/2, (1/2 - 0)/2, 0 -> AP = 1/2 * 1/4 + 0 * 1/4 = 1/8.
    parts = [(1001, 1, 200), (0, 2, 150), (1003, 2, 150), (1003, 0, 850)]
    result = evaluate(parts, [0.9, 0.95])
    assert result['ap25'] == pytest.approx(0.5)
    assert result['ap50'] == pytest.approx(1 / 8)
    assert result['ap'] == pytest.approx(1 / 8)


def test_unlabelled_vertices_of_a_class_count_as_void():
    # Labels: void (0), class 5 without instance (5000) and class 0 with a number (7) are
    # void; 1001 and 2003 are instances.
    unique, index = decode_gt_labels(np.array([0, 5000, 1001, 1001, 7, 2003]))
    assert unique.tolist() == [1001, 2003]
    assert index.tolist() == [-1, -1, 0, 0, -1, 1]


def test_predictions_further_than_015_m_map_to_nothing():
    # Raised by 0.2 m no GT vertex finds a predicted point: A missed, no prediction kept.
    far = evaluate([(1001, 1, 200)], [0.9], pred_offset_m=0.2)
    assert far['num_pred'] == 0
    assert far['ap'] == 0.0
    # Raised by 0.1 m every vertex maps to the instance right above it.
    near = evaluate([(1001, 1, 200)], [0.9], pred_offset_m=0.1)
    assert near['ap'] == pytest.approx(1.0)


def test_mapping_uses_only_points_with_an_instance():
    pred_points = np.array([[0.0, 0, 0], [0.05, 0, 0], [1.0, 0, 0]])
    pred_ids = np.array([0, 4, 2])
    gt_points = np.array([[0.01, 0, 0], [0.9, 0, 0], [0.5, 0, 0]])
    # Vertex 0 is nearest to the uncovered point 0, yet takes instance 4 (0.04 m away);
    # vertex 1 takes 2 (0.1 m); vertex 2 is 0.45 m from any covered point -> none.
    mapped = map_predictions_to_gt(pred_points, pred_ids, gt_points, 0.15)
    assert mapped.tolist() == [4, 2, 0]


def test_keep_rule_ratio_or_count():
    # Extra predicted points 1 m above the patches map to no GT vertex.
    scene = build_scene([(1001, 1, 100), (1002, 2, 100), (1003, 3, 120)], [0.9, 0.8, 0.7])
    extra_ids = np.array([1] * 100 + [2] * 20 + [3] * 200, dtype=np.int32)
    extra_points = np.concatenate([patch(0, 100, 1.0), patch(1, 20, 1.0), patch(2, 200, 1.0)])
    scene['pred_points'] = np.concatenate([scene['pred_points'], extra_points])
    scene['pred_instance_ids'] = np.concatenate([scene['pred_instance_ids'], extra_ids])
    matches = evaluate_scene(**scene)
    # Instance 1: 100 GT vertices / 200 points = 0.5 < 0.75 and not > 100 -> dropped.
    # Instance 2: 100 / 120 = 0.83 >= 0.75 -> kept. Instance 3: 120 > 100 -> kept.
    assert matches.pred_ids.tolist() == [2, 3]
    assert matches.pred_vertex_counts.tolist() == [100, 120]


def test_duplicate_match_keeps_the_higher_score_for_the_gt():
    # GT A: 400 vertices in two halves; prediction 1 (0.6) and 2 (0.9) each cover one half:
    # IoU 0.5 each, so both match A at 0.25. ScanNet's greedy pass gives A to prediction 1
    # (first in order) but scores A with max(0.6, 0.9) and the duplicate with 0.6:
    # at >= 0.6 p 1/2, r 1; at >= 0.9 p 1, r 1; (1, 0). Widths 0, 1/2, 1/2 -> AP = 1.
    # (Had the duplicate kept 0.9 it would rank first: AP would be 1/2 * 1/2 = 1/4.)
    result = evaluate([(1001, 1, 200), (1001, 2, 200)], [0.6, 0.9])
    assert result['ap25'] == pytest.approx(1.0)
    assert result['per_threshold']['0.25']['precision'] == pytest.approx(0.5)
    assert result['ap50'] == 0.0


def test_scenes_pool_into_one_curve():
    # Scene 1: 2 GT found; scene 2: 1 GT, nothing predicted. Pooled: p 1, r 2/3 -> AP 2/3
    # (the mean of per-scene APs would be (1 + 0) / 2 = 1/2).
    first = evaluate_scene(**build_scene([(1001, 1, 200), (1002, 2, 200)], [0.9, 0.8]),
                           name='first')
    second = evaluate_scene(**build_scene([(1001, 0, 200)], []), name='second')
    pooled = average_precision([first, second])
    assert pooled['ap'] == pytest.approx(2 / 3)
    assert pooled['num_gt'] == 3
    assert average_precision([second])['ap'] == 0.0


def test_no_gt_gives_nan():
    result = evaluate([(0, 1, 200)], [0.9])
    assert np.isnan(result['ap']) and np.isnan(result['ap25'])


def rotation_about(axis, angle_rad):
    """Return the (3, 3) rotation by ``angle_rad`` about unit ``axis`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * cross + (1 - np.cos(angle_rad)) * cross @ cross


def test_icp_recovers_a_small_rigid_motion():
    # A 3D lattice (10 cm spacing, centred) moved by 1 degree and ~2.6 cm: every point moves
    # less than the 5 cm correspondence limit and less than half the spacing.
    axis_values = (np.arange(8) - 3.5) * 0.1
    target = np.stack(np.meshgrid(axis_values, axis_values, axis_values), -1).reshape(-1, 3)
    rotation = rotation_about([1.0, 2.0, 3.0], np.deg2rad(1.0))
    translation = np.array([0.02, -0.01, 0.015])
    source = (target - translation) @ rotation  # inverse motion applied to the target
    transform = icp_point_to_point(source, target, max_distance_m=0.05)
    assert transform[:3, :3] == pytest.approx(rotation, abs=1e-9)
    assert transform[:3, 3] == pytest.approx(translation, abs=1e-9)


def test_icp_option_keeps_an_aligned_scene_perfect():
    config = ApConfig(icp=True)
    assert evaluate([(1001, 1, 200), (1002, 2, 200)], [0.9, 0.8], config)['ap'] == \
        pytest.approx(1.0)


def test_inputs_that_do_not_fit_raise():
    scene = build_scene([(1001, 2, 200)], [0.9])  # instance 2 but only one score
    with pytest.raises(ValueError, match='pred_instance_ids'):
        evaluate_scene(**scene)
    scene = build_scene([(1001, 1, 200)], [0.9])
    scene['gt_labels'] = scene['gt_labels'][:-1]
    with pytest.raises(ValueError, match='gt_labels'):
        evaluate_scene(**scene)
    with pytest.raises(ValueError, match='match_distance_m'):
        ApConfig(match_distance_m=-1.0)
