"""Text query ranking over exported instances, with a fake text encoder."""

import numpy as np
import pytest

from onlineanyseg_ros.core.export import ExportedMap
from onlineanyseg_ros.core.query import (query_instances, QueryUnavailable, rank_by_similarity,
                                         select_instance_points)

# Three instances with hand-made 4-D features: "chair" ~ axis 0, "table" ~ axis 1.
FEATURES = np.array([[0.0, 1.0, 0.0, 0.0],    # instance 1: a table
                     [0.9, 0.1, 0.0, 0.0],    # instance 2: mostly chair
                     [2.0, 0.0, 0.0, 2.0]],   # instance 3: chair-ish, not unit norm
                    dtype=np.float32)
VOCABULARY = {'chair': [1.0, 0.0, 0.0, 0.0], 'table': [0.0, 3.0, 0.0, 0.0]}


def _exported(features=FEATURES):
    instance_ids = np.array([0, 1, 1, 2, 3, 3, 3], dtype=np.int32)
    count = int(instance_ids.max())
    return ExportedMap(points=np.arange(21, dtype=np.float32).reshape(7, 3),
                       colors=np.zeros((7, 3), np.uint8), instance_ids=instance_ids,
                       scores=np.linspace(0.9, 0.7, count).astype(np.float32),
                       uids=np.array([10, 11, 12]), features=features)


def _fake_encoder(calls):
    def encode(texts):
        calls.append(list(texts))
        return np.array([VOCABULARY[text] for text in texts], dtype=np.float32)
    return encode


def test_ranks_by_cosine_and_truncates_to_top_k():
    calls = []
    result = query_instances(_exported(), 'chair', _fake_encoder(calls), top_k=2)
    assert calls == [['chair']]
    # cos(chair, instance 2) = 0.9 / |(0.9, 0.1)| = 0.994; instance 3: 1 / sqrt(2) = 0.707.
    assert result.rows.tolist() == [1, 2]
    assert result.instance_ids.tolist() == [2, 3]
    np.testing.assert_allclose(result.similarities, [0.9 / np.hypot(0.9, 0.1), 2 ** -0.5],
                               rtol=1e-6)
    table = query_instances(_exported(), 'table', _fake_encoder([]), top_k=5)
    assert table.rows.tolist() == [0, 1, 2]
    np.testing.assert_allclose(table.similarities, [1.0, 0.1 / np.hypot(0.9, 0.1), 0.0],
                               atol=1e-6)


def test_zero_feature_row_scores_zero_and_ties_keep_row_order():
    rows, cosines = rank_by_similarity(np.array([1.0, 0.0]),
                                       np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), 3)
    assert rows.tolist() == [2, 0, 1]
    np.testing.assert_allclose(cosines, [1.0, 0.0, 0.0])


@pytest.mark.parametrize('exported, message', [
    (_exported(features=None), 'no semantic features'),
    (_exported(features=np.ones((3, 7), np.float32)), 'do not match'),
    (ExportedMap(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8),
                 np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int64)),
     'no instance'),
])
def test_unanswerable_maps_raise_query_unavailable(exported, message):
    with pytest.raises(QueryUnavailable, match=message):
        query_instances(exported, 'chair', _fake_encoder([]), top_k=3)


def test_non_finite_features_and_bad_top_k_are_rejected():
    features = FEATURES.copy()
    features[1, 2] = np.nan
    with pytest.raises(QueryUnavailable, match='not finite'):
        query_instances(_exported(features), 'chair', _fake_encoder([]), top_k=3)
    with pytest.raises(ValueError, match='top_k'):
        rank_by_similarity(np.ones(4), FEATURES, 0)


def test_select_instance_points_picks_rows_plus_one():
    exported = _exported()
    assert select_instance_points(exported, np.array([2, 0])).tolist() == [
        False, True, True, False, True, True, True]
    assert select_instance_points(exported).all()
