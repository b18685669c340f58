"""Open-vocabulary instance query: rank exported instances by CLIP text similarity.

ROS-free and model-free: the text encoder is any callable ``(texts) -> (len(texts), D)``
array (``ClipEmbedder.embed_text`` in the node, a fake in tests), so the ranking is tested
without weights.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np

from onlineanyseg_ros.core.export import ExportedMap

TextEncoder = Callable[[List[str]], np.ndarray]
_NORM_EPS = 1e-12


class QueryUnavailable(ValueError):
    """The map cannot answer a text query (no instance, no features, dimension mismatch)."""


@dataclass(frozen=True)
class QueryResult:
    """The best instances for one text, by decreasing cosine similarity.

    Attributes:
        text: the query text.
        rows: int64 ``(K,)`` rows of the exported instances (instance id = row + 1).
        similarities: float32 ``(K,)`` cosine similarity of each row with the text.

    """

    text: str
    rows: np.ndarray
    similarities: np.ndarray

    @property
    def instance_ids(self) -> np.ndarray:
        """Return int64 ``(K,)`` exported instance ids (1..I) of the result."""
        return self.rows + 1


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Return float64 ``(N, D)`` rows scaled to unit L2 norm (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, _NORM_EPS)


def rank_by_similarity(text_embedding: np.ndarray, instance_features: np.ndarray,
                       top_k: int) -> tuple:
    """Return ``(rows, cosines)`` of the ``top_k`` instances most similar to a text.

    Args:
        text_embedding: float ``(D,)`` or ``(1, D)`` text embedding (any norm).
        instance_features: float ``(I, D)`` instance features (any norm; a zero row has
            cosine 0).
        top_k: how many to return (fewer when I < top_k), >= 1.

    Returns:
        int64 ``(K,)`` rows ordered by decreasing cosine (ties by row) and float32 ``(K,)``
        cosines.

    """
    if top_k < 1:
        raise ValueError(f'top_k must be >= 1, got {top_k}')
    text = np.asarray(text_embedding, dtype=np.float64).reshape(1, -1)
    features = np.asarray(instance_features)
    if features.ndim != 2 or features.shape[1] != text.shape[1]:
        raise QueryUnavailable(f'instance features {features.shape} do not match the text '
                               f'embedding dimension {text.shape[1]}')
    if not (np.all(np.isfinite(text)) and np.all(np.isfinite(features))):
        raise QueryUnavailable('text embedding or instance features are not finite')
    cosines = (_unit_rows(features) @ _unit_rows(text)[0]).astype(np.float32)
    order = np.argsort(-cosines, kind='stable')[:top_k]
    return order.astype(np.int64), cosines[order]


def query_instances(exported: ExportedMap, text: str, encode_text: TextEncoder,
                    top_k: int) -> QueryResult:
    """Rank the instances of ``exported`` by cosine similarity with ``text``.

    Raises QueryUnavailable (one clear sentence) when the map has no instance or its
    instances carry no semantic features, or when the dimensions do not fit.
    """
    if exported.num_instances == 0:
        raise QueryUnavailable('the map has no instance yet')
    if exported.features is None:
        raise QueryUnavailable('the map instances carry no semantic features (masks arrived '
                               'without CLIP features)')
    embedding = np.asarray(encode_text([text]))
    if embedding.ndim != 2 or embedding.shape[0] != 1:
        raise QueryUnavailable(f'the text encoder returned shape {embedding.shape}, expected '
                               '(1, D)')
    rows, cosines = rank_by_similarity(embedding[0], exported.features, top_k)
    return QueryResult(text=text, rows=rows, similarities=cosines)


def select_instance_points(exported: ExportedMap, rows: Optional[np.ndarray] = None
                           ) -> np.ndarray:
    """Return a bool ``(N,)`` mask of the points of instances ``rows`` (None = every point)."""
    if rows is None:
        return np.ones(exported.instance_ids.shape, dtype=bool)
    return np.isin(exported.instance_ids, np.asarray(rows, dtype=np.int64) + 1)
