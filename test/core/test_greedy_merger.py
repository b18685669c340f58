"""The greedy voxel-overlap baseline against hand-built cases."""

import torch

from onlineanyseg_ros.core.config import SegmenterConfig
from onlineanyseg_ros.core.greedy_merger import GreedyOverlapMerger


def _insert(merger, masks, scores=None):
    slots = torch.cat([torch.tensor(m, dtype=torch.int64) for m in masks])
    offsets = torch.tensor([0] + [len(m) for m in masks]).cumsum(0)
    merger.insert_frame(slots, slots, offsets, None,
                        torch.tensor(scores, dtype=torch.float32) if scores else None)


def test_overlapping_masks_join_and_disjoint_ones_do_not():
    merger = GreedyOverlapMerger(SegmenterConfig(greedy_iou_threshold=0.25, greedy_min_views=2))
    _insert(merger, [list(range(0, 10)), list(range(20, 30))])
    # IoU with instance 0 = 6 / 14 > 0.25; with instance 1 = 0.
    _insert(merger, [list(range(4, 14)), list(range(40, 45))])
    assert merger.num_merged == 3
    assert merger.valid.tolist() == [True, False, False]
    points, owner = merger.membership(torch.tensor([0, 5, 13, 25, 42, 99]))
    assert points.tolist() == [0, 1, 2, 3, 4]
    assert owner.tolist() == [0, 0, 0, 1, 2]
    assert merger.stable_ids().tolist() == [0, 1, 2]


def test_low_iou_starts_a_new_instance():
    merger = GreedyOverlapMerger(SegmenterConfig(greedy_iou_threshold=0.5))
    _insert(merger, [list(range(0, 10))])
    _insert(merger, [list(range(7, 17))])  # IoU 3 / 17 < 0.5
    assert merger.num_merged == 2


def test_confidence_and_state_round_trip():
    config = SegmenterConfig(valid_weight_cap=4)
    merger = GreedyOverlapMerger(config)
    _insert(merger, [list(range(10))], scores=[0.5])
    _insert(merger, [list(range(10))], scores=[1.0])
    assert torch.allclose(merger.confidence, torch.tensor([0.5 * 0.75]))
    restored = GreedyOverlapMerger(config)
    restored.load_state_dict(merger.state_dict())
    assert torch.equal(restored.membership(torch.arange(12))[1], torch.zeros(10, dtype=torch.long))
