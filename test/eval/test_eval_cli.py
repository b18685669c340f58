"""End-to-end `onlineanyseg eval` on tiny prediction and GT files written in tmp_path."""

import json

import numpy as np
import pytest

from onlineanyseg_ros.cli import main
from onlineanyseg_ros.data.io import write_label_file, write_ply


def patch(index, count):
    """Return float32 (count, 3) grid points (5 cm apart) of patch ``index``, 2 m apart."""
    k = np.arange(count)
    return np.stack([index * 2.0 + (k % 20) * 0.05, (k // 20) * 0.05,
                     np.zeros(count)], axis=1).astype(np.float32)


def write_scene(pred_dir, gt_dir, name, parts, scores, ascii_ply=False):
    """Write instances.npz and ScanNet-layout GT for (label, predicted id, count) parts."""
    points = np.concatenate([patch(i, count) for i, (_, _, count) in enumerate(parts)])
    labels = np.concatenate([np.full(count, label) for label, _, count in parts])
    pred_ids = np.concatenate([np.full(count, pred_id) for _, pred_id, count in parts])
    pred_dir.mkdir(parents=True)
    np.savez(pred_dir / 'instances.npz', points=points,
             colors=np.full(points.shape, 128, np.uint8),
             instance_ids=pred_ids.astype(np.int32), scores=np.asarray(scores, np.float32))
    gt_dir.mkdir(parents=True, exist_ok=True)
    ply_path, label_path = gt_dir / f'{name}_vh_clean_2.ply', gt_dir / f'{name}.txt'
    if ascii_ply:
        header = ['ply', 'format ascii 1.0', f'element vertex {len(points)}',
                  'property float x', 'property float y', 'property float z',
                  'element face 0', 'property list uchar int vertex_indices', 'end_header']
        rows = [' '.join(f'{v:.4f}' for v in point) for point in points]
        ply_path.write_text('\n'.join(header + rows) + '\n')
    else:
        write_ply(ply_path, points, np.zeros(points.shape, np.uint8))
    write_label_file(label_path, labels.astype(np.int64))
    return ply_path, label_path


@pytest.fixture
def two_scenes(tmp_path):
    """Scene a: both GT instances found; scene b: its one GT instance missed."""
    pred_root, gt_root = tmp_path / 'pred', tmp_path / 'gt'
    write_scene(pred_root / 'scene_a', gt_root / 'scene_a', 'scene_a',
                [(1001, 1, 200), (2002, 2, 300)], [0.9, 0.8])
    write_scene(pred_root / 'scene_b', gt_root / 'scene_b', 'scene_b',
                [(1001, 0, 200), (0, 1, 150)], [0.7])
    return pred_root, gt_root


def test_many_scenes_pool_print_and_write_json(two_scenes, capsys):
    pred_root, gt_root = two_scenes
    assert main(['eval', '--pred', str(pred_root), '--gt-root', str(gt_root)]) == 0
    table = capsys.readouterr().out
    assert 'scene_a' in table and 'scene_b' in table and 'pooled' in table
    report = json.loads((pred_root / 'eval_ap.json').read_text())
    # Pooled: 3 GT instances, 2 found with precision 1 (scene b's prediction lies on void
    # only, so it is excused) -> AP = recall = 2/3. Per scene: 1 and 0.
    assert report['pooled']['ap'] == pytest.approx(2 / 3)
    assert report['pooled']['ap25'] == pytest.approx(2 / 3)
    assert report['pooled']['num_gt'] == 3
    assert report['scenes']['scene_a']['ap50'] == pytest.approx(1.0)
    assert report['scenes']['scene_b']['ap50'] == 0.0
    assert report['config']['match_distance_m'] == 0.15


def test_one_scene_form_with_ascii_ply(tmp_path, capsys):
    ply_path, label_path = write_scene(
        tmp_path / 'out', tmp_path / 'gt', 'room',
        [(1001, 1, 200), (1002, 2, 200), (1003, 3, 200), (1004, 0, 200)], [1.0, 1.0, 1.0],
        ascii_ply=True)
    report_path = tmp_path / 'report.json'
    assert main(['eval', '--pred', str(tmp_path / 'out'), '--gt-vertices', str(ply_path),
                 '--gt-labels', str(label_path), '--json', str(report_path)]) == 0
    assert 'out' in capsys.readouterr().out
    # 3 of 4 found, one confidence: AP = r * (1 + p) / 2 = 0.75 * 2 / 2 = 0.75.
    report = json.loads(report_path.read_text())
    assert report['scenes']['out']['ap'] == pytest.approx(0.75)
    assert report['pooled']['ap50'] == pytest.approx(0.75)


def test_no_gt_writes_null_not_nan(tmp_path):
    ply_path, label_path = write_scene(tmp_path / 'out', tmp_path / 'gt', 'room',
                                       [(0, 1, 200)], [0.9])
    report_path = tmp_path / 'report.json'
    assert main(['eval', '--pred', str(tmp_path / 'out'), '--gt-vertices', str(ply_path),
                 '--gt-labels', str(label_path), '--json', str(report_path)]) == 0
    text = report_path.read_text()
    assert 'NaN' not in text
    assert json.loads(text)['pooled']['ap'] is None


def test_bad_invocations_fail_cleanly(two_scenes, tmp_path):
    pred_root, gt_root = two_scenes
    ply_path = gt_root / 'scene_a' / 'scene_a_vh_clean_2.ply'
    # Both forms at once, or half of the one-scene form: usage error.
    assert main(['eval', '--pred', str(pred_root), '--gt-root', str(gt_root),
                 '--gt-vertices', str(ply_path)]) == 2
    assert main(['eval', '--pred', str(pred_root / 'scene_a'),
                 '--gt-vertices', str(ply_path)]) == 2
    # A label file that does not match the PLY's vertex count, a missing prediction.
    short_labels = tmp_path / 'short.txt'
    short_labels.write_text('1001\n')
    assert main(['eval', '--pred', str(pred_root / 'scene_a'), '--gt-vertices', str(ply_path),
                 '--gt-labels', str(short_labels)]) == 1
    assert main(['eval', '--pred', str(tmp_path), '--gt-vertices', str(ply_path),
                 '--gt-labels', str(short_labels)]) == 1
    assert main(['eval', '--pred', str(pred_root), '--gt-root', str(gt_root),
                 '--scenes', 'scene_a', 'missing']) == 1
    assert not (pred_root / 'eval_ap.json').exists()
