"""`onlineanyseg query` over a saved map, with an injected text encoder."""

import argparse

import numpy as np

from onlineanyseg_ros.commands.query import run
from onlineanyseg_ros.core.export import ExportedMap


def _saved_map(tmp_path, with_features=True):
    points = np.array([[0, 0, 0], [0, 0, 1], [5, 0, 0], [5, 0, 1], [9, 9, 9]], np.float32)
    exported = ExportedMap(
        points=points, colors=np.zeros((5, 3), np.uint8),
        instance_ids=np.array([1, 1, 2, 2, 0], np.int32),
        scores=np.array([0.9, 0.8], np.float32), uids=np.array([7, 3]),
        features=np.array([[1, 0], [0, 1]], np.float32) if with_features else None)
    exported.save(tmp_path)
    return exported


class _FakeEmbedder:
    def embed_text(self, texts):
        # 'chair' points along the second feature axis, anything else along the first.
        return np.array([[0.0, 1.0] if 'chair' in text else [1.0, 0.0] for text in texts])


def _args(tmp_path, text):
    return argparse.Namespace(map_dir=str(tmp_path), text=text, top_k=1, clip_checkpoint='',
                              device='cpu')


def test_query_lists_the_most_similar_instance(tmp_path, capsys):
    _saved_map(tmp_path)
    assert run(_args(tmp_path, 'a chair'), load_embedder=lambda config: _FakeEmbedder()) == 0
    lines = capsys.readouterr().out.splitlines()
    # Instance 2 (uid 3) is the chair: cosine 1, two points centred at x = 5.
    assert len(lines) == 2
    assert lines[1].split()[:4] == ['2', '3', '1.000', '2']


def test_query_without_weights_or_features_fails_clearly(tmp_path, capsys):
    _saved_map(tmp_path)
    assert run(_args(tmp_path, 'a chair'), load_embedder=lambda config: None) == 1
    assert 'no CLIP weights' in capsys.readouterr().err
    _saved_map(tmp_path, with_features=False)
    assert run(_args(tmp_path, 'a chair'), load_embedder=lambda config: _FakeEmbedder()) == 1
    assert 'no semantic features' in capsys.readouterr().err


def test_exported_map_round_trip(tmp_path):
    exported = _saved_map(tmp_path)
    loaded = ExportedMap.load(tmp_path)
    assert np.array_equal(loaded.instance_ids, exported.instance_ids)
    assert np.array_equal(loaded.features, exported.features)
    assert loaded.instance_table()[1]['center'] == [5.0, 0.0, 0.5]
