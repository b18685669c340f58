"""Pure merge decisions of the mask graph (method.md 3.6, 4.3-4.6), as tensor functions.

Every function works on dense ``(M, M)`` tensors over the current merged masks on one
device and returns new tensors; nothing here keeps state. ``C[a, b]`` is the containment
matrix, read "a contains b" (share of b's visible voxels that lie in a), diagonal 1.
"""

from typing import Optional

import torch

_FLOAT16_EXACT = 2048  # float16 holds every integer up to 2**11


def gated_containment(overlap: torch.Tensor, visible: torch.Tensor, size: torch.Tensor,
                      contain_min: float, visible_ratio_min: float,
                      visible_min_voxels: int) -> torch.Tensor:
    """Return the visibility-normalised containment ``overlap / visible`` with its gates.

    Args:
        overlap: int64 ``(n,)`` voxels shared by the container and the contained mask.
        visible: int64 ``(n,)`` voxels of the contained mask observed in the container's
            frames (the denominator).
        size: int64 ``(n,)`` voxel count of the contained mask.
        contain_min: ratios at or below this become 0.
        visible_ratio_min: the visible share ``visible / size`` must exceed this...
        visible_min_voxels: ...or ``visible`` must exceed this, else the ratio is 0.

    Returns:
        float32 ``(n,)`` in ``[0, 1]``.

    """
    visible_f = visible.to(torch.float32)
    ratio = (overlap.to(torch.float32) / visible_f.clamp_min(1.0)).clamp_max(1.0)
    seen_enough = ((visible_f / size.to(torch.float32).clamp_min(1.0) > visible_ratio_min)
                   | (visible > visible_min_voxels))
    return torch.where(seen_enough & (ratio > contain_min), ratio, torch.zeros_like(ratio))


def semantic_phi(cosine: torch.Tensor, min_cosine: float, slope: float) -> torch.Tensor:
    """Map cosines through phi of method.md 4.3: 0 at or below ``min_cosine``, 1 at 1."""
    clamped = cosine.clamp(min_cosine, 1.0)
    return (-torch.expm1(-slope * (clamped - min_cosine))
            / -torch.expm1(torch.tensor(-slope * (1.0 - min_cosine), dtype=cosine.dtype,
                                        device=cosine.device)))


def cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """Return the ``(M, M)`` row cosines of ``vectors`` ``(M, D)``, 0 for zero rows."""
    unit = torch.nn.functional.normalize(vectors.to(torch.float32), dim=1, eps=1e-7)
    return unit @ unit.T


def overlap_similarity(containment: torch.Tensor) -> torch.Tensor:
    """Return ``S_ov = (C + C^T) / 2``, the mean of both containment ratios."""
    return 0.5 * (containment + containment.T)


def supporter_counts(containment: torch.Tensor, weights: torch.Tensor,
                     containing_ratio: float, contained_ratio: float,
                     saturation: Optional[int] = None) -> torch.Tensor:
    """Return ``Sup = A diag(w) A^T``: total weight of masks that contain both i and j.

    ``A[i, k] = C[k, i] > containing_ratio and C[i, k] > contained_ratio`` (k mostly contains
    i, and i covers a fair share of k), ``A[i, i] = 0``. Float32 ``(M, M)``.

    ``saturation``: a positive integer when only ``Sup >= saturation`` matters. Weights are
    clamped to it, which keeps every count below it exact and every count at or above it at
    or above it. On CUDA, with ``saturation <= 2048``, the product then runs in float16 on
    the tensor cores: integers up to 2048 are exact there, and rounding (monotone) cannot
    bring a larger sum under ``saturation``. About 4x faster than float32 at M = 3,500.
    """
    supported = (containment.T > containing_ratio) & (containment > contained_ratio)
    supported.fill_diagonal_(False)
    weights = weights.to(torch.float32)
    dtype = torch.float32
    if saturation is not None:
        weights = weights.clamp_max(saturation)
        if containment.is_cuda and saturation <= _FLOAT16_EXACT:
            dtype = torch.float16
    a = supported.to(dtype)
    return ((a * weights.to(dtype)[None, :]) @ a.T).to(torch.float32)


def similarity_edges(score: torch.Tensor, containment: torch.Tensor, score_threshold: float,
                     overlap_threshold: float) -> torch.Tensor:
    """Return the symmetric bool ``(M, M)`` similarity-rule edges (method.md 4.4 step 1).

    An edge needs ``score > score_threshold`` and both ``C[i, j]`` and ``C[j, i]`` above
    ``overlap_threshold``; no self edges.
    """
    edges = ((score > score_threshold) & (containment > overlap_threshold)
             & (containment.T > overlap_threshold))
    edges = torch.tril(edges, diagonal=-1)
    return edges | edges.T


def supporter_edges(support: torch.Tensor, min_weight: float) -> torch.Tensor:
    """Return the symmetric bool ``(M, M)`` supporter-rule edges ``Sup >= min_weight``."""
    edges = support >= min_weight
    edges.fill_diagonal_(False)
    return edges


def stage1_edges(containment: torch.Tensor, weights: torch.Tensor,
                 features: Optional[torch.Tensor], descriptors: Optional[torch.Tensor],
                 has_descriptor: torch.Tensor, config) -> torch.Tensor:
    """Return the stage-1 merge edges: similarity rule or supporter rule, descriptor-gated.

    Args:
        containment: float32 ``(M, M)``.
        weights: int64 ``(M,)`` raw masks per merged mask.
        features: float32 ``(M, D)`` summed semantic vectors, or None (semantic term off).
        descriptors: float32 ``(M, Dg)`` geometric descriptors, or None (geometric term off).
        has_descriptor: bool ``(M,)``; edges touching a mask without one are removed.
        config: a ``SegmenterConfig``.

    Returns:
        Symmetric bool ``(M, M)``, no self edges.

    """
    score = overlap_similarity(containment)
    # sim_merge_threshold assumes all three terms; an inactive term is credited instead of
    # counted as disagreement (without it nothing could pass 2.3 with one term missing).
    inactive_terms = int(features is None) + int(descriptors is None)
    threshold = config.sim_merge_threshold - inactive_terms * config.inactive_term_credit
    if features is not None:
        score = score + semantic_phi(cosine_matrix(features), config.semantic_min_cosine,
                                     config.semantic_slope)
    if descriptors is not None:
        geometric = cosine_matrix(descriptors)
        score = score + geometric * (has_descriptor[:, None] & has_descriptor[None, :])
    edges = similarity_edges(score, containment, threshold, config.merge_overlap_threshold)
    support = supporter_counts(containment, weights, config.containing_ratio,
                               config.contained_ratio, saturation=config.merge_supporter_weight)
    edges |= supporter_edges(support, config.merge_supporter_weight)
    return edges & has_descriptor[:, None] & has_descriptor[None, :]


def containment_edges(containment: torch.Tensor, valid: torch.Tensor,
                      ratio: float) -> torch.Tensor:
    """Return the stage-2 absorption edges (method.md 4.6), symmetric bool ``(M, M)``.

    Rows and columns of invalid masks are zeroed; a pair ``(i, j)`` is a candidate when
    ``C[i, j] > ratio`` (i contains j); each contained column j keeps only its container
    with the largest containment, so a mask is absorbed by at most one mask per iteration.
    """
    if containment.shape[0] == 0:
        return torch.zeros_like(containment, dtype=torch.bool)
    gated = containment * (valid[:, None] & valid[None, :])
    gated.fill_diagonal_(0.0)
    best = gated.argmax(dim=0)
    columns = torch.arange(gated.shape[1], device=gated.device)
    keep = gated[best, columns] > ratio
    edges = torch.zeros_like(gated, dtype=torch.bool)
    edges[best, columns] = keep
    return edges | edges.T


def validity(weights: torch.Tensor, merge_time: int, weight_cap: int) -> torch.Tensor:
    """Return bool ``(M,)``: ``weights >= min(merge_time + 2, weight_cap)`` (method.md 4.5.8)."""
    return weights >= min(merge_time + 2, weight_cap)
