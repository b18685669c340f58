"""Merge decision functions on hand-built matrices and against loop references."""

import numpy as np
import pytest
import torch

from onlineanyseg_ros.core import merging
from onlineanyseg_ros.core.config import SegmenterConfig

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def test_phi_ramps_from_min_cosine_to_one():
    cosine = torch.tensor([-0.5, 0.6, 0.8, 0.9, 1.0])
    phi = merging.semantic_phi(cosine, 0.6, 0.1)
    assert phi[0] == 0.0 and phi[1] == 0.0 and torch.isclose(phi[4], torch.tensor(1.0))
    assert abs(float(phi[2]) - 0.505) < 1e-3  # method.md 4.3: phi(0.8) = 0.505
    assert phi[2] < phi[3] < phi[4]


def test_gated_containment_gates():
    overlap = torch.tensor([10, 10, 10, 2, 600, 30])
    visible = torch.tensor([20, 21, 20, 100, 900, 20])
    size = torch.tensor([100, 100, 40, 100, 10000, 50])
    ratio = merging.gated_containment(overlap, visible, size, contain_min=0.025,
                                      visible_ratio_min=0.2, visible_min_voxels=500)
    expected = [0.0,          # visible share exactly 0.2 and <= 500 voxels: gated
                10 / 21,      # share 0.21
                0.5,          # share 0.5
                0.0,          # ratio 0.02 <= contain_min
                600 / 900,    # share 0.09 but more than 500 visible voxels
                1.0]          # clamped to 1
    assert torch.allclose(ratio, torch.tensor(expected))


def test_supporter_counts_match_loop():
    generator = torch.Generator().manual_seed(0)
    containment = torch.rand((9, 9), generator=generator)
    weights = torch.randint(1, 6, (9,), generator=generator)
    support = merging.supporter_counts(containment, weights, 0.6, 0.3)
    expected = np.zeros((9, 9))
    for i in range(9):
        for j in range(9):
            for k in range(9):
                a_ik = k != i and containment[k, i] > 0.6 and containment[i, k] > 0.3
                a_jk = k != j and containment[k, j] > 0.6 and containment[j, k] > 0.3
                expected[i, j] += float(weights[k]) * (a_ik and a_jk)
    np.testing.assert_allclose(support.numpy(), expected)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('saturation', [1, 4, 40])
def test_saturated_supporter_counts_decide_the_threshold_exactly(device, saturation):
    # Dense containment so that many masks support a pair and sums pass 2048 (float16).
    generator = torch.Generator().manual_seed(saturation)
    containment = torch.rand((300, 300), generator=generator).to(device)
    weights = torch.randint(1, 60, (300,), generator=generator).to(device)
    exact = merging.supporter_counts(containment, weights, 0.1, 0.1)
    saturated = merging.supporter_counts(containment, weights, 0.1, 0.1, saturation)
    assert float(exact.max()) > 2048
    assert torch.equal(saturated >= saturation, exact >= saturation)
    below = exact < saturation
    assert torch.equal(saturated[below], exact[below])


def test_similarity_edges_need_score_and_both_containments():
    containment = torch.tensor([[1.0, 0.5, 0.9], [0.5, 1.0, 0.3], [0.9, 0.9, 1.0]])
    score = torch.full((3, 3), 2.5)
    score[2, 0] = score[0, 2] = 2.2
    edges = merging.similarity_edges(score, containment, 2.3, 0.4)
    # (0, 1): both 0.5 > 0.4; (0, 2): score too low; (1, 2): C[1, 2] = 0.3.
    assert edges.tolist() == [[False, True, False], [True, False, False],
                              [False, False, False]]


def test_stage1_edges_descriptor_gate_and_supporter_rule():
    config = SegmenterConfig()
    # Masks 0 and 1 are disjoint halves of mask 2 (weight 5): supporter edge (0, 1).
    containment = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [1.0, 1.0, 1.0]])
    weights = torch.tensor([1, 1, 5])
    features = torch.eye(3)
    has = torch.tensor([True, True, True])
    edges = merging.stage1_edges(containment, weights, features, None, has, config)
    assert edges.tolist() == [[False, True, False], [True, False, False],
                              [False, False, False]]
    edges = merging.stage1_edges(containment, weights, features, None,
                                 torch.tensor([True, False, True]), config)
    assert not edges.any()


def test_stage1_threshold_depends_on_semantic_features():
    config = SegmenterConfig()
    containment = torch.tensor([[1.0, 0.6], [0.6, 1.0]])
    descriptors = torch.tensor([[1.0, 0.0], [0.9, 0.1]])
    has = torch.tensor([True, True])
    # S_ov 0.6 + S_geo 0.99: above 1.3 without semantic features...
    without = merging.stage1_edges(containment, torch.ones(2), None, descriptors, has, config)
    assert without[0, 1]
    # ...but below 2.3 with orthogonal semantic features (S_sem 0).
    with_features = merging.stage1_edges(containment, torch.ones(2), torch.eye(2),
                                         descriptors, has, config)
    assert not with_features[0, 1]


def test_containment_edges_keep_one_container_per_column():
    containment = torch.tensor([
        [1.0, 0.0, 0.0, 0.9],
        [0.0, 1.0, 0.0, 0.95],
        [0.85, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0]])
    valid = torch.tensor([True, True, True, True])
    edges = merging.containment_edges(containment, valid, 0.8)
    expected = torch.zeros((4, 4), dtype=torch.bool)
    expected[1, 3] = expected[3, 1] = True  # column 3: container 1 (0.95) beats 0 (0.9)
    expected[2, 0] = expected[0, 2] = True
    assert torch.equal(edges, expected)
    # An invalid best container hands the column to the next valid one.
    edges = merging.containment_edges(containment, torch.tensor([True, False, True, True]),
                                      0.8)
    assert edges[0, 3] and not edges[1, 3]


def test_validity_threshold():
    weights = torch.tensor([1, 2, 3, 5, 7])
    assert merging.validity(weights, 0, 5).tolist() == [False, True, True, True, True]
    assert merging.validity(weights, 2, 5).tolist() == [False, False, False, True, True]
    assert merging.validity(weights, 9, 5).tolist() == [False, False, False, True, True]
