"""Greedy voxel-overlap merging: the simple baseline the mask graph must beat.

Every new mask joins the existing instance with which it has the highest voxel IoU when that
IoU exceeds a threshold, otherwise it starts a new instance; each voxel belongs to the
instance that claimed it last. No containment, no visibility normalisation, no semantic or
geometric term, no second stage. It plugs into ``OnlineSegmenter`` in place of ``MaskGraph``
(same verbs), so both see identical lifted masks.
"""

from typing import Dict, Optional, Tuple

import torch

from onlineanyseg_ros.core.config import SegmenterConfig


class GreedyOverlapMerger:
    """Per-voxel instance ownership merged greedily by IoU (``config.greedy_iou_threshold``).

    Instances are valid once ``config.greedy_min_views`` masks joined them.
    """

    def __init__(self, config: SegmenterConfig, device='cpu'):
        self.config = config
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Forget every instance."""
        self._owner = torch.full((0,), -1, dtype=torch.int64, device=self.device)
        self._weights = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._features: Optional[torch.Tensor] = None
        self._score_sum = torch.zeros(0, dtype=torch.float32, device=self.device)

    @property
    def num_merged(self) -> int:
        """Number of instances created so far (ids never change)."""
        return int(self._weights.numel())

    @property
    def valid(self) -> torch.Tensor:
        """Bool ``(M,)``: joined by at least ``greedy_min_views`` masks."""
        return self._weights >= self.config.greedy_min_views

    @property
    def features(self) -> Optional[torch.Tensor]:
        """Float32 ``(M, D)`` summed mask features, or None."""
        return self._features

    @property
    def confidence(self) -> torch.Tensor:
        """Float32 ``(M,)``: ``min(views / valid_weight_cap, 1) * mean 2D score``."""
        weights = self._weights.to(torch.float32)
        support = (weights / self.config.valid_weight_cap).clamp_max(1.0)
        return support * (self._score_sum / weights.clamp_min(1.0)).clamp(0.0, 1.0)

    def stable_ids(self) -> torch.Tensor:
        """Int64 ``(M,)``: instance ids are never renumbered, so they are their own ids."""
        return torch.arange(self.num_merged, device=self.device)

    def membership(self, point_slots: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(point index, instance id)`` for every point whose voxel has an owner."""
        point_slots = point_slots.to(self.device)
        owner = torch.full_like(point_slots, -1)
        known = point_slots < self._owner.numel()
        owner[known] = self._owner[point_slots[known]]
        points = torch.nonzero(owner >= 0).squeeze(1)
        return points, owner[points]

    def insert_frame(self, observed_slots: torch.Tensor, mask_slots: torch.Tensor,
                     mask_offsets: torch.Tensor, features: Optional[torch.Tensor] = None,
                     scores: Optional[torch.Tensor] = None,
                     num_slots: Optional[int] = None) -> None:
        """Merge one frame's masks (slots packed by ``mask_offsets``) into the instances.

        ``num_slots``: size of the slot space (above every slot), or None to read it from
        the slots.
        """
        del observed_slots  # the baseline has no visibility model
        num_masks = mask_offsets.numel() - 1
        if num_masks == 0:
            return
        if num_slots is not None:
            needed = num_slots
        else:
            needed = int(mask_slots.max()) + 1 if mask_slots.numel() else 0
        if needed > self._owner.numel():
            grown = torch.full((max(needed, 2 * self._owner.numel()),), -1, dtype=torch.int64,
                               device=self.device)
            grown[:self._owner.numel()] = self._owner
            self._owner = grown
        sizes = mask_offsets[1:] - mask_offsets[:-1]
        mask_of_entry = torch.repeat_interleave(torch.arange(num_masks, device=self.device),
                                                sizes)
        target = self._best_instances(mask_slots, mask_of_entry, sizes)
        fresh = target < 0
        target[fresh] = self.num_merged + torch.arange(int(fresh.sum()), device=self.device)
        total = self.num_merged + int(fresh.sum())
        self._weights = _grow(self._weights, total).index_add_(
            0, target, torch.ones_like(target))
        mask_scores = scores if scores is not None else torch.ones(num_masks,
                                                                   device=self.device)
        self._score_sum = _grow(self._score_sum, total).index_add_(0, target,
                                                                   mask_scores.float())
        if features is not None:
            self._features = _grow_rows(self._features, total, features.shape[1],
                                        self.device).index_add_(0, target, features.float())
        self._owner[mask_slots] = target[mask_of_entry]

    def _best_instances(self, mask_slots: torch.Tensor, mask_of_entry: torch.Tensor,
                        sizes: torch.Tensor) -> torch.Tensor:
        """Int64 ``(k,)`` best-IoU existing instance per mask, -1 below the threshold."""
        num_masks = sizes.numel()
        owners = self._owner[mask_slots]
        owned = owners >= 0
        if self.num_merged == 0 or not bool(owned.any()):
            return torch.full((num_masks,), -1, dtype=torch.int64, device=self.device)
        pair = mask_of_entry[owned] * self.num_merged + owners[owned]
        overlap = torch.bincount(pair, minlength=num_masks * self.num_merged).view(
            num_masks, self.num_merged).to(torch.float32)
        instance_size = torch.bincount(self._owner[self._owner >= 0],
                                       minlength=self.num_merged).to(torch.float32)
        iou = overlap / (sizes[:, None].float() + instance_size[None, :] - overlap).clamp_min(1)
        best_iou, best = iou.max(dim=1)
        return torch.where(best_iou > self.config.greedy_iou_threshold, best,
                           torch.full_like(best, -1))

    def merge_round(self, point_slots: torch.Tensor,
                    point_features: Optional[torch.Tensor] = None) -> Dict[str, int]:
        """Nothing to do: the baseline merges greedily at insertion."""
        return {'num_merged': self.num_merged, 'num_valid': int(self.valid.sum())}

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Tensors of the merger."""
        state = {'owner': self._owner, 'weights': self._weights, 'score_sum': self._score_sum}
        if self._features is not None:
            state['features'] = self._features
        return state

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore ``state_dict`` output."""
        self._owner = state['owner'].to(self.device)
        self._weights = state['weights'].to(self.device)
        self._score_sum = state['score_sum'].to(self.device)
        features = state.get('features')
        self._features = features.to(self.device) if features is not None else None


def _grow(values: torch.Tensor, size: int) -> torch.Tensor:
    """Return ``values`` zero-padded to ``size`` entries."""
    grown = torch.zeros(size, dtype=values.dtype, device=values.device)
    grown[:values.numel()] = values
    return grown


def _grow_rows(rows: Optional[torch.Tensor], size: int, width: int,
               device: torch.device) -> torch.Tensor:
    """Return ``rows`` (or nothing) zero-padded to ``(size, width)`` float32."""
    grown = torch.zeros((size, width), dtype=torch.float32, device=device)
    if rows is not None:
        grown[:rows.shape[0]] = rows
    return grown
