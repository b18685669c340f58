"""Mask graph on the device: merged masks over voxel slots, containment and merge rounds.

Implements method.md 3.4-3.6 and 4.2-4.7 on tensors. Voxels are int64 *slots* of a shared,
append-only slot space (core.voxel_hash) that grows between calls; this module never sees
coordinates. State (all on ``device``):

- observations: bit ``f % 63`` of word ``f // 63`` of a slot is set when an accepted mask of
  insertion ``f`` covered the slot before boundary removal (bit 63, the sign bit, stays
  unused so bit rows pack by sum). Only the *active* word (the one of the latest insertion)
  is a dense int64 column over all slots (grown by doubling); when insertions move on to the
  next word, its non-zero entries are frozen into a sparse store: ``(slot << 23 | word)``
  keys, sorted, with their int64 words. A voxel is seen in a few stretches of time, so the
  store holds a few words per voxel instead of ``frames / 63`` (a dense bitset at 5,000
  keyframes and 5M slots would be 4 GB);
- merged-level incidence: deduplicated ``(merged id, slot)`` pairs sorted by id (a CSR
  ``mask -> slots``, in buffers with free room for appends) plus the same pairs sorted by
  slot (the join ``slot -> merged ids``) as a main run and a small delta run of the masks
  inserted since the last renumbering, so that an insert costs O(its pairs), not O(map);
- per merged mask: weight, summed semantic vector, frame bitset, geometric descriptor and
  its flag, creation insertion, first member insertion, summed 2D score;
- dense containment ``C[a, b]`` ("a contains b") with capacity doubling;
- ``merged_of_raw``: raw id (append-only, one per inserted mask) -> merged id, -1 = removed.

Host syncs happen only where a size must be known. An insertion reads twice: the number
of deduplicated new (mask, voxel) pairs with the length of their join, then the number of
overlapping pairs with the lengths of the visibility expansions (entries are masked, not
compacted, so that sizes known together are read together). More reads: the largest
inserted slot when the caller does not give the slot-space size, the entries frozen when a
word fills up (every 63 insertions), a frame whose visibility expansion exceeds
``_PAIR_VOXELS`` (chunked), and in merge rounds the joins and the merge decisions: the edge
list goes to the host, which labels the components and sends the renumbering back in one
copy.
"""

import bisect
from typing import Dict, NamedTuple, Optional, Tuple

import torch

from onlineanyseg_ros.core import merging
from onlineanyseg_ros.core.config import SegmenterConfig
from onlineanyseg_ros.core.graph_ops import (bounded_sums, connected_components,
                                             count_values, expand_segments, run_starts,
                                             segment_sums, sorted_counts)

BITS_PER_WORD = 63
_KEY_SHIFT = 40  # packed key (merged id << 40) | slot; slots stay below 2**40
_SLOT_MASK = (1 << _KEY_SHIFT) - 1
_WORD_BITS = 23  # frozen observation key (slot << 23) | word: 2**23 words = 528M insertions
_WORD_MASK = (1 << _WORD_BITS) - 1
_PAIR_VOXELS = 1 << 23  # bounds the (pair, voxel) elements of one visibility chunk
# Free room of the id-sorted pair buffers after a renumbering: size / 8, at least 2**16 pairs
# (the pairs of the few keyframes until the next merge round).
_INCIDENCE_HEADROOM = 8
_MIN_PAIR_CAPACITY = 1 << 16


def _merge_sorted(old_keys: torch.Tensor, old_values: torch.Tensor, new_keys: torch.Tensor,
                  new_values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Merge two key-sorted int64 ``(n,)`` / ``(m,)`` runs with their payloads in ``O(n + m)``.

    Equal keys keep the old entries first (``new`` is stable after ``old``).
    """
    device = old_keys.device
    new_pos = (torch.searchsorted(old_keys, new_keys, right=True)
               + torch.arange(new_keys.numel(), device=device))
    old_pos = torch.arange(old_keys.numel(), device=device) + torch.searchsorted(new_keys,
                                                                                 old_keys)
    total = old_keys.numel() + new_keys.numel()
    keys = old_keys.new_empty(total)
    values = old_values.new_empty(total)
    keys[old_pos], keys[new_pos] = old_keys, new_keys
    values[old_pos], values[new_pos] = old_values, new_values
    return keys, values


def _unpack_bits(words: torch.Tensor) -> torch.Tensor:
    """Unpack int64 ``(n, W)`` frame words to uint8 ``(n, W * 63)`` bits, frame order."""
    shifts = torch.arange(BITS_PER_WORD, device=words.device)
    return ((words[:, :, None] >> shifts) & 1).to(torch.uint8).flatten(1)


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack bool/uint8 ``(n, W * 63)`` bits into int64 ``(n, W)`` words."""
    shifts = torch.arange(BITS_PER_WORD, device=bits.device)
    return (bits.view(bits.shape[0], -1, BITS_PER_WORD).to(torch.int64) << shifts).sum(-1)


class _FramePairs(NamedTuple):
    """A frame's deduplicated (mask, slot) pairs and their overlap with the current masks.

    ``masks``, ``slots``: int64 ``(V,)``, ordered by mask (``0..k-1``) then slot.
    ``overlap``: int64 ``(k, M)`` voxels shared with each of the ``M`` current masks (None
    when there were none).
    """

    masks: torch.Tensor
    slots: torch.Tensor
    overlap: Optional[torch.Tensor] = None


class MaskGraph:
    """Merged 3D masks over voxel slots with containment, merging and pruning (torch only)."""

    def __init__(self, config: SegmenterConfig, device='cpu') -> None:
        """Create an empty graph for ``config`` on ``device`` (torch device or string)."""
        self.config = config
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Forget every mask, observation and counter."""
        self._num_insertions = 0
        self._merge_time = 0
        self._validity_level = 0  # merge_time used by the last validity computation
        self._num_merged = 0
        self._active_bits = self._long(0)  # word ``_active_word`` of every slot
        self._active_word = 0
        self._frozen_keys = self._long(0)  # sorted (slot << _WORD_BITS) | word
        self._frozen_words = self._long(0)
        self._frames = self._long((0, 1))
        self._weights = self._long(0)
        self._created = self._long(0)
        self._first_frame = self._long(0)
        self._score_sum = torch.zeros(0, device=self.device)
        self._features: Optional[torch.Tensor] = None
        self._descriptors: Optional[torch.Tensor] = None
        self._has_descriptor = torch.zeros(0, dtype=torch.bool, device=self.device)
        self._merged_of_raw = self._long(0)
        self._containment = torch.zeros((0, 0), device=self.device)
        self._set_incidence(self._long(0), self._long(0))

    # ----------------------------------------------------------------- read-only state

    @property
    def num_merged(self) -> int:
        """Number of current merged masks ``M``."""
        return self._num_merged

    @property
    def num_insertions(self) -> int:
        """Number of ``insert_frame`` calls so far (the next seg-frame index)."""
        return self._num_insertions

    @property
    def merge_time(self) -> int:
        """Number of stage-1 merges that merged something."""
        return self._merge_time

    @property
    def weights(self) -> torch.Tensor:
        """Int64 ``(M,)``: raw masks merged into each merged mask."""
        return self._weights

    @property
    def valid(self) -> torch.Tensor:
        """Bool ``(M,)``: the weight reaches the validity threshold of the last merge.

        The threshold is ``min(merge_time + 2, valid_weight_cap)`` with the merge_time that
        the last merging call saw (method.md 4.5 step 8).
        """
        return merging.validity(self._weights, self._validity_level,
                                self.config.valid_weight_cap)

    @property
    def features(self) -> Optional[torch.Tensor]:
        """Float32 ``(M, D)`` summed unit semantic vectors, or None when none were given."""
        return self._features

    @property
    def descriptors(self) -> Optional[torch.Tensor]:
        """Float32 ``(M, Dg)`` mean geometric descriptor per mask (zero rows: none), or None."""
        return self._descriptors

    @property
    def has_descriptor(self) -> torch.Tensor:
        """Bool ``(M,)``: the mask had enough surface points for a descriptor once."""
        return self._has_descriptor

    @property
    def merged_of_raw(self) -> torch.Tensor:
        """Int64 ``(R,)``: merged id of every raw mask ever inserted, -1 when pruned."""
        return self._merged_of_raw

    @property
    def voxel_counts(self) -> torch.Tensor:
        """Int64 ``(M,)``: voxel slots per merged mask."""
        return self._voxel_counts

    @property
    def containment(self) -> torch.Tensor:
        """Float32 ``(M, M)`` view of ``C``: ``C[a, b]`` = share of b's visible voxels in a."""
        return self._containment[:self._num_merged, :self._num_merged]

    @property
    def confidence(self) -> torch.Tensor:
        """Float32 ``(M,)`` instance score in ``[0, 1]`` for AP ranking.

        ``min(w / valid_weight_cap, 1) * (0.5 + 0.5 * observed_share) * mean_score``: support
        by raw masks, the share of insertions since the first member that segmented the
        mask (frames in its bitset over insertions since), and the mean 2D mask score
        (1 when scores were not given).
        """
        weights = self._weights.to(torch.float32)
        weight_term = (weights / self.config.valid_weight_cap).clamp_max(1.0)
        span = (self._num_insertions - self._first_frame).clamp_min(1).to(torch.float32)
        seen = _unpack_bits(self._frames).sum(1).to(torch.float32)
        observed_share = (seen / span).clamp_max(1.0)
        mean_score = (self._score_sum / weights.clamp_min(1.0)).clamp(0.0, 1.0)
        return weight_term * (0.5 + 0.5 * observed_share) * mean_score

    def stable_ids(self) -> torch.Tensor:
        """Int64 ``(M,)`` id of each merged mask that survives merges and renumbering.

        The id is the oldest raw mask id among the members: a merge keeps the id of its
        oldest member, so an instance's id (and its marker and colour) stays put while it
        grows.
        """
        ids = torch.full((self._num_merged,), torch.iinfo(torch.int64).max,
                         dtype=torch.int64, device=self.device)
        members = self._merged_of_raw >= 0
        raw_ids = torch.arange(self._merged_of_raw.numel(), device=self.device)
        ids.scatter_reduce_(0, self._merged_of_raw[members], raw_ids[members], reduce='amin')
        return ids

    def membership(self, point_slots: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return every ``(point index, merged id)`` whose merged voxel set holds the slot.

        Args:
            point_slots: int64 ``(P,)`` slots (any value; unknown slots match nothing).

        Returns:
            Two int64 ``(E,)`` tensors, ordered by point index then merged id.

        """
        return self._join(point_slots.to(self.device))

    # ----------------------------------------------------------------- insertion

    def insert_frame(self, observed_slots: torch.Tensor, mask_slots: torch.Tensor,
                     mask_offsets: torch.Tensor, features: Optional[torch.Tensor] = None,
                     scores: Optional[torch.Tensor] = None,
                     num_slots: Optional[int] = None) -> None:
        """Insert one frame's accepted masks as new merged masks (method.md 4.2 steps 3-4).

        Args:
            observed_slots: int64 ``(n,)`` slots covered by any lifted mask of the frame
                before boundary removal (the observation set; duplicates allowed).
            mask_slots: int64 ``(sum k_i,)`` slots of the k accepted masks after boundary
                removal, mask i at ``mask_slots[mask_offsets[i]:mask_offsets[i + 1]]``.
            mask_offsets: int64 ``(k + 1,)`` non-decreasing, starting at 0.
            features: float32 ``(k, D)`` unit semantic vectors, or None.
            scores: float32 ``(k,)`` 2D mask scores in ``[0, 1]``, or None (treated as 1).
            num_slots: size of the slot space, above every slot passed (not checked), as
                the voxel hash knows it; None reads the largest slot from the device (a
                host sync) and checks the range.

        """
        observed_slots, mask_slots, mask_offsets = (
            t.to(self.device) for t in (observed_slots, mask_slots, mask_offsets))
        num_masks = self._check_frame(observed_slots, mask_slots, mask_offsets, features,
                                      scores)
        frame = self._num_insertions
        # Mask voxels are observed by definition; adding them keeps vis >= overlap.
        self._mark_observed(torch.cat([observed_slots, mask_slots]), frame, num_slots)
        if num_masks:
            existing = self._num_merged
            pairs = self._frame_pairs(mask_slots, mask_offsets, join=existing > 0)
            self._append_masks(pairs.masks, pairs.slots, num_masks, features, scores, frame)
            if existing:
                self._contain_new_masks(pairs, existing)
        self._num_insertions += 1

    def _check_frame(self, observed_slots, mask_slots, mask_offsets, features, scores) -> int:
        """Validate the shapes and dtypes of one frame and return its mask count."""
        for name, value in (('observed_slots', observed_slots), ('mask_slots', mask_slots),
                            ('mask_offsets', mask_offsets)):
            if value.ndim != 1 or value.dtype != torch.int64:
                raise ValueError(f'{name} must be a 1-D int64 tensor, got {value.dtype} '
                                 f'{tuple(value.shape)}')
        num_masks = mask_offsets.numel() - 1
        if num_masks < 0:
            raise ValueError('mask_offsets needs k + 1 >= 1 entries')
        if features is not None and (features.ndim != 2 or features.shape[0] != num_masks
                                     or (self._features is not None
                                         and features.shape[1] != self._features.shape[1])):
            raise ValueError(f'features must be (k={num_masks}, D) with a fixed D, got '
                             f'{tuple(features.shape)}')
        if scores is not None and tuple(scores.shape) != (num_masks,):
            raise ValueError(f'scores must be ({num_masks},), got {tuple(scores.shape)}')
        return num_masks

    def _mark_observed(self, slots: torch.Tensor, frame: int,
                       num_slots: Optional[int] = None) -> None:
        """Set the observation bit of ``frame`` for ``slots``, growing the store as needed."""
        word, bit = divmod(frame, BITS_PER_WORD)
        if word != self._active_word:
            self._freeze_active_word()
            self._active_word = word
        words = self._frames.shape[1]
        if word >= words:
            self._frames = torch.nn.functional.pad(self._frames,
                                                   (0, max(words, word + 1 - words)))
        if not slots.numel():
            return
        if num_slots is None:
            low, high = (int(v) for v in torch.aminmax(slots))  # sync: the slot space grows
            if low < 0 or high > _SLOT_MASK:
                raise ValueError(f'slots must lie in [0, 2**{_KEY_SHIFT}), got [{low}, {high}]')
            num_slots = high + 1
        rows = self._active_bits.shape[0]
        if num_slots > rows:
            self._active_bits = torch.nn.functional.pad(self._active_bits,
                                                        (0, max(num_slots, 2 * rows) - rows))
        self._active_bits[slots] |= 1 << bit

    def _freeze_active_word(self) -> None:
        """Move the non-zero entries of the active word into the sparse frozen store."""
        slots = torch.nonzero(self._active_bits).squeeze(1)  # sync, once per 63 insertions
        if slots.numel():
            keys = (slots << _WORD_BITS) | self._active_word
            self._frozen_keys, self._frozen_words = _merge_sorted(
                self._frozen_keys, self._frozen_words, keys, self._active_bits[slots])
        self._active_bits.zero_()

    def _append_masks(self, masks: torch.Tensor, slots: torch.Tensor, num_masks: int,
                      features, scores, frame: int) -> None:
        """Append one frame's masks as merged masks of weight 1 (C rows zero, diagonal 1).

        ``masks``, ``slots``: int64 ``(V,)`` deduplicated (mask index in the frame, slot)
        pairs, ordered by mask then slot (``_frame_pairs``).
        """
        old = self._num_merged
        new = old + num_masks
        self._append_incidence(masks + old, slots, num_masks)
        word, bit = divmod(frame, BITS_PER_WORD)
        frames = self._long((num_masks, self._frames.shape[1]))
        frames[:, word] = 1 << bit
        self._frames = torch.cat([self._frames, frames])
        self._weights = torch.cat([self._weights, self._long(num_masks).fill_(1)])
        self._created = torch.cat([self._created, self._long(num_masks).fill_(frame)])
        self._first_frame = torch.cat([self._first_frame, self._long(num_masks).fill_(frame)])
        if scores is None:
            scores = torch.ones(num_masks, device=self.device)
        self._score_sum = torch.cat([self._score_sum, scores.to(self.device, torch.float32)])
        self._features = self._append_rows(self._features, features, num_masks)
        self._descriptors = self._append_rows(self._descriptors, None, num_masks)
        self._has_descriptor = torch.cat([self._has_descriptor, torch.zeros(
            num_masks, dtype=torch.bool, device=self.device)])
        self._merged_of_raw = torch.cat([self._merged_of_raw, torch.arange(
            old, new, device=self.device)])
        capacity = self._containment.shape[0]
        if new > capacity:
            grown = torch.zeros((max(new, 2 * capacity, 16),) * 2, device=self.device)
            grown[:capacity, :capacity] = self._containment
            self._containment = grown
        # index_fill_ takes the scalar on the host; item assignment would copy it (a sync).
        diagonal = torch.arange(old, new, device=self.device) * (self._containment.shape[0] + 1)
        self._containment.view(-1).index_fill_(0, diagonal, 1.0)
        self._num_merged = new

    def _append_rows(self, table: Optional[torch.Tensor], rows: Optional[torch.Tensor],
                     count: int) -> Optional[torch.Tensor]:
        """Append ``rows`` (or zeros) to a per-mask float table created on first use."""
        if rows is None:
            return None if table is None else torch.cat([table, table.new_zeros(
                (count, table.shape[1]))])
        rows = rows.to(self.device, torch.float32)
        if table is None:
            table = rows.new_zeros((self._num_merged, rows.shape[1]))
        return torch.cat([table, rows])

    # ----------------------------------------------------------------- incidence

    def _set_incidence(self, mids: torch.Tensor, slots: torch.Tensor,
                       by_slot: Optional[torch.Tensor] = None,
                       by_slot_mid: Optional[torch.Tensor] = None) -> None:
        """Install pairs sorted by (merged id, slot), deduplicated, and the slot-sorted join.

        ``by_slot``/``by_slot_mid``: the same pairs sorted by (slot, id) when the caller has
        them; else they are sorted here. The id-sorted pairs are copied into buffers with
        room for the inserts until the next renumbering (``_INCIDENCE_HEADROOM``).
        """
        size = mids.numel()
        capacity = size + max(size // _INCIDENCE_HEADROOM, _MIN_PAIR_CAPACITY)
        self._mid_buffer, self._slot_buffer = self._long(capacity), self._long(capacity)
        self._mid_buffer[:size], self._slot_buffer[:size] = mids, slots
        self._inc_mid, self._inc_slot = self._mid_buffer[:size], self._slot_buffer[:size]
        # Pairs are sorted by id: segment bounds by binary search, not contended atomics.
        self._mask_ptr = torch.searchsorted(mids, torch.arange(self._num_merged + 1,
                                                               device=self.device))
        self._voxel_counts = self._mask_ptr[1:] - self._mask_ptr[:-1]
        if by_slot is None:
            order = torch.argsort(slots, stable=True)
            by_slot, by_slot_mid = slots[order], mids[order]
        self._by_slot, self._by_slot_mid = by_slot, by_slot_mid
        self._delta_slot, self._delta_mid = self._long(0), self._long(0)

    def _append_incidence(self, mids, slots, num_masks: int) -> None:
        """Append the pairs of new masks (ids above all current ones) in O(new pairs).

        The id-sorted pairs go into the buffers' free room (doubling when full). The join
        index has two slot-sorted runs: the main run, rebuilt by every renumbering, and a
        delta run of the masks inserted since, into which the new pairs are merged; the
        delta is merged into the main run when it grows past a quarter of it (merge rounds
        renumber long before that, every few keyframes).
        """
        size, added = self._inc_mid.numel(), mids.numel()
        if size + added > self._mid_buffer.numel():
            capacity = max(2 * self._mid_buffer.numel(), size + added)
            for name in ('_mid_buffer', '_slot_buffer'):
                grown = self._long(capacity)
                grown[:size] = getattr(self, name)[:size]
                setattr(self, name, grown)
        self._mid_buffer[size:size + added] = mids
        self._slot_buffer[size:size + added] = slots
        self._inc_mid = self._mid_buffer[:size + added]
        self._inc_slot = self._slot_buffer[:size + added]
        counts = sorted_counts(mids - self._num_merged, num_masks)
        self._voxel_counts = torch.cat([self._voxel_counts, counts])
        self._mask_ptr = torch.cat([self._mask_ptr,
                                    self._mask_ptr[-1] + torch.cumsum(counts, 0)])
        new_slots, order = torch.sort(slots, stable=True)
        # Equal slots: the new (larger) ids go after the old ones, keeping id order per slot.
        self._delta_slot, self._delta_mid = _merge_sorted(self._delta_slot, self._delta_mid,
                                                          new_slots, mids[order])
        if self._delta_slot.numel() > self._by_slot.numel() // 4:
            self._by_slot, self._by_slot_mid = _merge_sorted(
                self._by_slot, self._by_slot_mid, self._delta_slot, self._delta_mid)
            self._delta_slot, self._delta_mid = self._long(0), self._long(0)

    def _join(self, slots: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Join slots with the merged incidence: ``(index into slots, merged id)`` pairs.

        Ordered by slot index, then merged id: per slot the main run's ids, then the delta
        run's (all larger). One host sync: the number of pairs.
        """
        ranges = self._join_ranges(slots)
        return self._expand_join(ranges, int(ranges[-1].sum()))

    def _join_ranges(self, slots: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Where int64 ``(n,)`` slots sit in the slot-sorted incidence runs (no host sync).

        Returns ``(low, main_counts, delta_low, counts)``, int64 ``(n,)`` each: the first
        entry and entry count in the main run, the first entry in the delta run, and the
        total count (main + delta) per slot.
        """
        low = torch.searchsorted(self._by_slot, slots)
        main_counts = torch.searchsorted(self._by_slot, slots, right=True) - low
        delta_low = torch.searchsorted(self._delta_slot, slots)
        delta_counts = torch.searchsorted(self._delta_slot, slots, right=True) - delta_low
        return low, main_counts, delta_low, main_counts + delta_counts

    def _expand_join(self, ranges: Tuple[torch.Tensor, ...],
                     total: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``_join`` from ``_join_ranges`` output; ``total`` must equal ``counts.sum()``.

        Entries may carry counts other than their ranges' (0 masks an entry out).
        """
        low, main_counts, delta_low, counts = ranges
        owner, position = expand_segments(low, counts, total)
        if not self._delta_slot.numel():
            return owner, self._by_slot_mid[position]
        # Past its main count a position continues in the delta run. (The main run is not
        # empty here: a delta is merged in as soon as it outgrows a quarter of it.)
        beyond = position - (low + main_counts)[owner]
        in_main = beyond < 0
        main_ids = self._by_slot_mid[position.clamp_max(self._by_slot.numel() - 1)]
        delta_ids = self._delta_mid[(delta_low[owner] + beyond).clamp_min(0)]
        return owner, torch.where(in_main, main_ids, delta_ids)

    def _mask_voxels(self, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(index into ids, slot)`` for every voxel of the merged masks ``ids``."""
        lengths = self._voxel_counts[ids]
        owner, position = expand_segments(self._mask_ptr[ids], lengths, int(lengths.sum()))
        return owner, self._inc_slot[position]

    def _segment_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Int64 ``(M,)`` sums of int64 ``values`` ``(pairs,)`` (incidence order) per mask.

        On CUDA: prefix sums read at the mask bounds, because an ``index_add_`` over the
        sorted ids serialises its atomics (20x slower on an H200 at 7M pairs). On the CPU
        ``index_add_`` is the faster one (a single pass, no atomics).
        """
        if self.device.type != 'cuda':
            return self._long(self._num_merged).index_add_(0, self._inc_mid, values)
        return bounded_sums(values, self._mask_ptr)

    # ----------------------------------------------------------------- containment

    def _frame_pairs(self, mask_slots: torch.Tensor, mask_offsets: torch.Tensor,
                     join: bool) -> '_FramePairs':
        """Deduplicate a frame's (mask, slot) pairs and, with ``join``, count the overlap.

        The frame's masks are numbered ``0..k-1``. Duplicates are masked out, not
        compacted, so that one host read returns both sizes that the insertion needs
        before its overlap counts: the deduplicated pairs and the join's length. The join
        runs before the new masks are appended, so it meets current masks only.
        """
        num_masks = mask_offsets.numel() - 1
        mask_of_entry = torch.searchsorted(mask_offsets[1:], torch.arange(
            mask_slots.numel(), device=self.device), right=True)
        keys = torch.sort((mask_of_entry << _KEY_SHIFT) | mask_slots).values
        first = run_starts(keys)
        slots = keys & _SLOT_MASK
        if not join:
            num_pairs = int(first.sum())
            rows = torch.nonzero_static(first, size=num_pairs).squeeze(1)
            return _FramePairs(keys[rows] >> _KEY_SHIFT, slots[rows])
        ranges = self._join_ranges(slots)
        join_counts = ranges[-1] * first
        num_pairs, join_total = torch.stack((first.sum(), join_counts.sum())).tolist()
        rows = torch.nonzero_static(first, size=num_pairs).squeeze(1)
        existing = self._num_merged
        entry, target = self._expand_join(ranges[:3] + (join_counts,), join_total)
        overlap = self._long(num_masks * existing).index_add_(
            0, (keys[entry] >> _KEY_SHIFT) * existing + target,
            torch.ones_like(target)).view(num_masks, existing)
        return _FramePairs(keys[rows] >> _KEY_SHIFT, slots[rows], overlap)

    def _contain_new_masks(self, pairs: '_FramePairs', existing: int) -> None:
        """Write ``C`` between the masks just appended and the ``existing`` ones they overlap.

        Query A of method.md 3.6 for the new masks, both directions, as
        ``_update_containment`` computes it, except for what the sizes need: a new mask's
        frame set is the current frame alone (in the active word), so no frozen word of a
        target can share a frame with it; the expansion's length and the frozen entries
        of the new masks' voxels then follow from the overlap counts, and are read back
        with the number of overlapping pairs in one host sync. (This path is bound by
        kernel launches and by atomics: sums over sorted ids take prefix sums.)
        """
        overlaps = pairs.overlap > 0
        targets_per_query = overlaps.sum(1)
        query_voxels = self._voxel_counts[existing:]
        # Frozen observation entries of the new masks' voxels (in incidence order).
        frozen_low, frozen_counts = self._frozen_ranges(pairs.slots)
        frozen_per_query = segment_sums(frozen_counts, query_voxels)
        num_pairs, target_voxels, query_pair_voxels, frozen_total = torch.stack(
            (overlaps.sum(), (overlaps * self._voxel_counts[:existing]).sum(),
             (query_voxels * targets_per_query).sum(),
             (frozen_per_query * targets_per_query).sum())).tolist()
        if not num_pairs:
            return
        rows, targets = torch.nonzero_static(overlaps, size=num_pairs).unbind(1)
        queries = rows + existing
        # Both directions in one pass: first "query contains target" (the target's voxels
        # seen in the query's frames), then "target contains query".
        contained = torch.cat([targets, queries])
        container = torch.cat([queries, targets])
        total = target_voxels + query_pair_voxels
        if total > _PAIR_VOXELS:
            visible = self._pair_visibility(contained, container)
        else:
            pair, position = expand_segments(self._mask_ptr[contained],
                                             self._voxel_counts[contained], total)
            slots, observer = self._inc_slot[position], container[pair]
            seen = ((self._active_bits[slots] & self._frames[observer, self._active_word])
                    != 0).to(torch.int64)
            # Frozen words: the query voxels' only (elements past the target voxels).
            voxel = position[target_voxels:] - self._mask_ptr[existing]  # into pairs.slots
            element, shares = self._frozen_shares(frozen_low[voxel], frozen_counts[voxel],
                                                  frozen_total, observer[target_voxels:])
            seen.scatter_reduce_(0, element + target_voxels, shares.to(torch.int64), 'amax')
            visible = segment_sums(seen, self._voxel_counts[contained])
        cfg = self.config
        self._containment[container, contained] = merging.gated_containment(
            pairs.overlap[rows, targets].repeat(2), visible, self._voxel_counts[contained],
            cfg.contain_min, cfg.visible_ratio_min, cfg.visible_min_voxels)

    def _update_containment(self, query_ids: torch.Tensor,
                            query_voxels: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                            ) -> None:
        """Write ``C`` in both directions between ``query_ids`` and overlapping masks.

        Query A of method.md 3.6 (and Query B among the queries themselves): overlap by the
        slot join and a dense count, visibility through the observation store and the frame
        sets, the gates of ``merging.gated_containment``. Targets are all masks; a pair of
        two queries is computed once. ``query_voxels``: the queries' voxels as ``(index
        into query_ids, slot)`` when the caller has them. Entries of pairs without overlap
        are left untouched.
        """
        num, count = self._num_merged, query_ids.numel()
        if query_voxels is None:
            query_voxels = self._mask_voxels(query_ids)
        voxel_owner, voxel_slots = query_voxels
        join_owner, targets = self._join(voxel_slots)
        overlap = self._long(count * num).index_add_(
            0, voxel_owner[join_owner] * num + targets, torch.ones_like(targets)).view(count, num)
        target_rank = self._long(num).fill_(count)
        target_rank[query_ids] = torch.arange(count, device=self.device)
        own_rank = torch.arange(count, device=self.device)[:, None]
        # A pair of two queries is computed once, from the later query (no self pairs).
        overlap.masked_fill_((target_rank < count) & (target_rank >= own_rank), 0)
        rows, targets = torch.nonzero(overlap, as_tuple=True)
        if not rows.numel():
            return
        shared = overlap[rows, targets]
        queries = query_ids[rows]
        cfg = self.config
        gates = (cfg.contain_min, cfg.visible_ratio_min, cfg.visible_min_voxels)
        # Both directions in one pass: first "query contains target" (the target's voxels
        # seen in the query's frames), then "target contains query".
        contained = torch.cat([targets, queries])
        container = torch.cat([queries, targets])
        self._containment[container, contained] = merging.gated_containment(
            shared.repeat(2), self._pair_visibility(contained, container),
            self._voxel_counts[contained], *gates)

    def _pair_visibility(self, seen: torch.Tensor, observers: torch.Tensor) -> torch.Tensor:
        """Return int64 ``(p,)`` ``vis(seen[i] | observers[i])`` for ``p`` pairs.

        ``vis(a|b) = |{v in V_a : obs[v] & frames[b] != 0}|`` (method.md 3.6 steps 2-3),
        over each voxel's active word and frozen words. Work is ``O(sum |V_seen| * words
        per voxel)``, in chunks of at most ``_PAIR_VOXELS`` (pair, voxel) elements.
        """
        lengths = self._voxel_counts[seen]
        counts = self._long(seen.numel())
        bounds = torch.cumsum(lengths, 0).tolist()  # sync: chunk sizes
        first = 0
        while first < len(bounds):
            base = bounds[first - 1] if first else 0
            last = max(first + 1, bisect.bisect_right(bounds, base + _PAIR_VOXELS, first))
            pair, position = expand_segments(self._mask_ptr[seen[first:last]],
                                             lengths[first:last], bounds[last - 1] - base)
            slots = self._inc_slot[position]
            observer = observers[first:last][pair]
            visible = self._frozen_visible(slots, observer)
            visible |= (self._active_bits[slots] & self._frames[observer, self._active_word]) != 0
            counts[first:last] = segment_sums(visible, lengths[first:last])
            first = last
        return counts

    def _frozen_visible(self, slots: torch.Tensor, observer: torch.Tensor) -> torch.Tensor:
        """Bool ``(n,)``: a frozen word of ``slots[i]`` shares a frame with ``observer[i]``."""
        low, lengths = self._frozen_ranges(slots)
        element, shares = self._frozen_shares(low, lengths, int(lengths.sum()),  # sync: size
                                              observer)
        return segment_sums(shares, lengths) > 0

    def _frozen_ranges(self, slots: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Int64 ``(n,)`` first entry and entry count of each slot in the frozen store."""
        low = torch.searchsorted(self._frozen_keys, slots << _WORD_BITS)
        return low, torch.searchsorted(self._frozen_keys, (slots + 1) << _WORD_BITS) - low

    def _frozen_shares(self, low: torch.Tensor, lengths: torch.Tensor, total: int,
                       observer: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Expand the frozen entries of elements with ``_frozen_ranges`` output.

        Returns ``(element, shares)`` per entry: its element ``i`` and whether its word
        shares a frame with ``observer[i]``. ``total`` must equal ``lengths.sum()``.
        """
        element, entry = expand_segments(low, lengths, total)
        words = self._frozen_keys[entry] & _WORD_MASK
        return element, (self._frozen_words[entry] & self._frames[observer[element], words]) != 0

    # ----------------------------------------------------------------- merge round

    def merge_round(self, point_slots: torch.Tensor,
                    point_features: Optional[torch.Tensor]) -> Dict[str, int]:
        """Run one merge round: descriptors, stage 1, stage 2, validity, pruning.

        Args:
            point_slots: int64 ``(P,)`` slot of every current surface point.
            point_features: float32 ``(P, Dg)`` per-point geometric features, or None
                (descriptor 'none': eligibility from the point count alone, S_geo = 0).

        Returns:
            Counts: ``stage1_merged`` and ``stage2_merged`` (components formed),
            ``stage2_iterations``, ``removed`` (pruned singletons), ``num_merged``,
            ``num_valid``.

        """
        stats = {'stage1_merged': 0, 'stage2_merged': 0, 'stage2_iterations': 0, 'removed': 0}
        points = self._points_per_slot(point_slots.to(self.device), point_features)
        # Stage 2 only joins valid masks, and with a validity threshold of at least 2 (always,
        # unless valid_weight_cap is 1) a singleton is never valid: the singletons that stage
        # 1 leaves alone are final, so their pruning joins stage 1's renumbering.
        fold_pruning = self.config.valid_weight_cap >= 2
        if self._num_merged:
            self._update_descriptors(*points)
            edges = merging.stage1_edges(self.containment, self._weights, self._features,
                                         self._descriptors, self._has_descriptor, self.config)
            stats['stage1_merged'], stats['removed'] = self._merge(
                edges, points, self._stale() if fold_pruning else None)
        if stats['stage1_merged']:
            self._merge_time += 1
            for _ in range(self.config.contain_merge_iterations):
                stats['stage2_iterations'] += 1
                edges = merging.containment_edges(self.containment, self.valid,
                                                  self.config.contain_merge_ratio)
                edges &= self._has_descriptor[:, None] & self._has_descriptor[None, :]
                merged, _ = self._merge(edges, points)
                stats['stage2_merged'] += merged
                if not merged:
                    break
        if not fold_pruning:
            stats['removed'] = self._prune_singletons()
        stats['num_merged'] = self._num_merged
        stats['num_valid'] = int(self.valid.sum())
        return stats

    def _points_per_slot(self, point_slots: torch.Tensor, point_features
                         ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Aggregate surface points per slot: counts ``(S,)`` and feature sums ``(S, Dg)``.

        ``S`` = rows of the active observation word; points on slots no mask ever held are
        dropped (they cannot fall in any voxel set).
        """
        rows = self._active_bits.shape[0]
        # Unknown slots land in a spare last row (no compaction: a host sync on CUDA).
        known = (point_slots >= 0) & (point_slots < rows)
        slots = torch.where(known, point_slots, rows)
        counts = count_values(slots, rows + 1)[:rows]
        if point_features is None:
            return counts, None
        features = point_features.to(self.device, torch.float32)
        sums = features.new_zeros((rows + 1, features.shape[1])).index_add_(0, slots, features)
        return counts, sums[:rows]

    def _update_descriptors(self, slot_counts: torch.Tensor,
                            slot_sums: Optional[torch.Tensor]) -> None:
        """Pool descriptors from surface points (method.md 4.4 step 0 and 4.5 step 5).

        Every mask with ``>= descriptor_min_points`` points gets the mean point feature and
        its flag; masks with fewer keep their descriptor (for a just-merged mask: the
        weight-weighted mean of its members, set by ``_renumber``). Pooling goes over the
        deduplicated incidence, so a point counts once per mask that holds its slot.
        """
        counts = self._segment_sums(slot_counts[self._inc_slot])
        eligible = counts >= self.config.descriptor_min_points
        self._has_descriptor = self._has_descriptor | eligible
        if slot_sums is None:
            return
        if self._descriptors is None:
            self._descriptors = slot_sums.new_zeros((self._num_merged, slot_sums.shape[1]))
        sums = torch.zeros_like(self._descriptors).index_add_(
            0, self._inc_mid, slot_sums[self._inc_slot])
        pooled = sums / counts.clamp_min(1)[:, None]
        self._descriptors = torch.where(eligible[:, None], pooled, self._descriptors)

    def _merge(self, edges: torch.Tensor, points=None,
               stale: Optional[torch.Tensor] = None) -> Tuple[int, int]:
        """Merge the connected components of ``edges`` and prune; return both counts.

        ``points``: per-slot point aggregates of this round (``_points_per_slot``) to
        re-pool the new masks' descriptors, or None to keep the members' weighted mean.
        ``stale``: bool ``(M,)`` masks to remove unless they join a component, or None.

        The decision is taken on the host: the edge list (and ``stale``) comes back in one
        read after the edge count (two host syncs), components are labelled there (a few
        thousand masks: microseconds), and the renumbering goes back in one copy.
        """
        num = self._num_merged
        pairs = torch.nonzero(edges).reshape(-1)  # sync: the edge count
        if stale is not None:
            pairs = torch.cat([pairs, stale.to(torch.int64)])
        host = pairs.cpu()
        if stale is None:
            return self._apply_merge(host.view(-1, 2), None, points)
        return self._apply_merge(host[:-num].view(-1, 2), host[-num:].bool(), points)

    def _apply_merge(self, edge_list: torch.Tensor, stale: Optional[torch.Tensor],
                     points) -> Tuple[int, int]:
        """Merge along the CPU int64 ``(E, 2)`` ``edge_list``, drop ``stale`` (CPU bool) masks.

        See ``_merge``; returns (components formed, masks removed).
        """
        num = self._num_merged
        labels = connected_components(num, edge_list[:, 0], edge_list[:, 1])
        grouped = torch.bincount(labels, minlength=num)[labels] > 1
        roots = grouped & (labels == torch.arange(num))
        removed = torch.zeros_like(grouped) if stale is None else stale & ~grouped
        num_groups, num_removed = int(roots.sum()), int(removed.sum())
        if not num_groups and not num_removed:
            return 0, 0
        kept = ~grouped & ~removed
        num_kept = int(kept.sum())
        # Kept masks first in ascending order, then components by their smallest member.
        group_rank = torch.cumsum(roots, 0) - 1
        new_of_old = torch.where(grouped, num_kept + group_rank[labels],
                                 torch.where(kept, torch.cumsum(kept, 0) - 1, -1))
        self._renumber(new_of_old, num_kept, num_groups)
        if num_groups:
            if points is not None:
                self._update_descriptors(*points)
            self._validity_level = self._merge_time
        return num_groups, num_removed

    def _stale(self) -> torch.Tensor:
        """Bool ``(M,)``: never-merged masks created >= singleton_expiry_keyframes ago."""
        age = (self._num_insertions - 1) - self._created
        return (self._weights <= 1) & (age >= self.config.singleton_expiry_keyframes)

    def _prune_singletons(self) -> int:
        """Remove the stale masks (``_stale``) now; return how many."""
        no_edges = torch.zeros((0, 2), dtype=torch.int64)
        return self._apply_merge(no_edges, self._stale().cpu(), None)[1]

    def _renumber(self, new_of_old: torch.Tensor, num_kept: int, num_new: int) -> None:
        """Apply one renumbering to every per-mask field (method.md 4.5 steps 2-7, 4.7).

        Args:
            new_of_old: int64 ``(M,)`` on the CPU: new id per old mask, -1 = removed; kept
                masks map to ``0..num_kept-1`` in ascending old order, merged components to
                ``num_kept..``.
            num_kept: masks that keep their identity (their ``C`` block is copied).
            num_new: merged components (new masks; their ``C`` rows are recomputed).

        """
        total = num_kept + num_new
        source = torch.nonzero(new_of_old >= 0).squeeze(1)
        target = new_of_old[source]
        kept = source[target < num_kept]
        members = source[target >= num_kept]
        # Every index the device needs, in one host -> device copy.
        parts = (new_of_old, source, target, kept, members)
        packed = torch.cat(parts)
        if self.device.type == 'cuda':
            packed = packed.pin_memory().to(self.device, non_blocking=True)
        new_of_old, source, target, kept, members = packed.split([p.numel() for p in parts])

        def summed(values: torch.Tensor) -> torch.Tensor:
            return values.new_zeros((total,) + values.shape[1:]).index_add_(
                0, target, values[source])

        weights = self._weights
        weight_with_descriptor = (weights * self._has_descriptor).to(torch.float32)
        if self._descriptors is not None:
            # Merged masks start from the weight-weighted mean of members with a descriptor.
            fallback = summed(self._descriptors * weight_with_descriptor[:, None])
            fallback /= summed(weight_with_descriptor).clamp_min(1e-12)[:, None]
            fallback[:num_kept] = self._descriptors[kept]
            self._descriptors = fallback
        self._has_descriptor = summed(self._has_descriptor.long()) > 0
        self._weights = summed(weights)
        self._score_sum = summed(self._score_sum)
        self._features = None if self._features is None else summed(self._features)
        # Frame sets: kept rows are copied; only members of merged components are unpacked.
        frames = self._frames.new_zeros((total, self._frames.shape[1]))
        frames[:num_kept] = self._frames[kept]
        if num_new:
            bits = _unpack_bits(self._frames[members]).to(torch.int32)
            frames[num_kept:] = _pack_bits(bits.new_zeros((num_new, bits.shape[1])).index_add_(
                0, new_of_old[members] - num_kept, bits) > 0)
        self._frames = frames
        self._first_frame = self._first_frame.new_zeros(total).scatter_reduce_(
            0, target, self._first_frame[source], 'amin', include_self=False)
        created = self._long(total).fill_(self._num_insertions - 1)
        created[:num_kept] = self._created[kept]
        self._created = created
        raw_alive = self._merged_of_raw >= 0
        self._merged_of_raw = torch.where(
            raw_alive, new_of_old[self._merged_of_raw.clamp_min(0)], -1)
        incidence, new_voxels = self._renumbered_incidence(new_of_old, kept, members, num_kept)
        capacity = self._containment.shape[0]
        containment = torch.eye(capacity, device=self.device)
        containment[:num_kept, :num_kept] = self._containment[kept][:, kept]
        self._containment = containment
        self._num_merged = total
        self._set_incidence(*incidence)
        if num_new:
            self._update_containment(torch.arange(num_kept, total, device=self.device),
                                     query_voxels=new_voxels)

    def _renumbered_incidence(self, new_of_old: torch.Tensor, kept: torch.Tensor,
                              members: torch.Tensor, num_kept: int
                              ) -> Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]]:
        """Return the incidence after ``new_of_old`` and the merged components' voxels.

        ``kept`` and ``members`` are the old ids of the kept masks (ascending) and of the
        members of merged components. Kept masks map monotonically, so their pairs stay
        sorted and unique in both orders and are only gathered; the pairs of merged
        components (new ids above every kept id) are deduplicated, sorted and merged in.
        Linear in the incidence plus a sort of the merged components' pairs. Host syncs:
        the two pair counts (one read) and the deduplication.

        Returns ``((mids, slots, by_slot, by_slot_mid), (component index, slot))``, the
        second ordered by component then slot.
        """
        kept_lengths, member_lengths = self._voxel_counts[kept], self._voxel_counts[members]
        main_new_mid = new_of_old[self._by_slot_mid]
        main_kept = (main_new_mid >= 0) & (main_new_mid < num_kept)
        kept_pairs, member_pairs, main_kept_pairs = (int(n) for n in torch.stack(
            [kept_lengths.sum(), member_lengths.sum(), main_kept.sum()]).tolist())  # sync
        kept_mids, position = expand_segments(self._mask_ptr[kept], kept_lengths, kept_pairs)
        kept_slots = self._inc_slot[position]
        member, position = expand_segments(self._mask_ptr[members], member_lengths,
                                           member_pairs)
        group_keys = torch.unique(((new_of_old[members][member] - num_kept) << _KEY_SHIFT)
                                  | self._inc_slot[position])
        group_index, group_slots = group_keys >> _KEY_SHIFT, group_keys & _SLOT_MASK
        mids = torch.cat([kept_mids, group_index + num_kept])
        slots = torch.cat([kept_slots, group_slots])
        # Both join runs keep their kept pairs in order (sizes known: no compaction sync).
        main_rows = torch.nonzero_static(main_kept, size=main_kept_pairs).squeeze(1)
        delta_new_mid = new_of_old[self._delta_mid]
        delta_rows = torch.nonzero_static((delta_new_mid >= 0) & (delta_new_mid < num_kept),
                                          size=kept_pairs - main_kept_pairs).squeeze(1)
        # Stable: within a slot the merged components stay in id order. Per slot, ids grow
        # from the main run to the delta run to the components, and so does the merge order.
        sorted_slots, order = torch.sort(group_slots, stable=True)
        newer_slots, newer_mids = _merge_sorted(self._delta_slot[delta_rows],
                                                delta_new_mid[delta_rows], sorted_slots,
                                                group_index[order] + num_kept)
        by_slot, by_slot_mid = _merge_sorted(self._by_slot[main_rows], main_new_mid[main_rows],
                                             newer_slots, newer_mids)
        return (mids, slots, by_slot, by_slot_mid), (group_index, group_slots)

    # ----------------------------------------------------------------- persistence

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Return the full state as tensors (derived indexes are rebuilt on load)."""
        num = self._num_merged
        state = {
            'counters': torch.tensor([self._num_insertions, self._merge_time,
                                      self._validity_level, num, self._active_word]),
            'active_observations': self._active_bits, 'frozen_keys': self._frozen_keys,
            'frozen_words': self._frozen_words, 'frames': self._frames, 'weights': self._weights,
            'created': self._created, 'first_frame': self._first_frame,
            'score_sum': self._score_sum, 'has_descriptor': self._has_descriptor,
            'merged_of_raw': self._merged_of_raw, 'containment': self.containment,
            'incidence_mid': self._inc_mid, 'incidence_slot': self._inc_slot,
        }
        if self._features is not None:
            state['features'] = self._features
        if self._descriptors is not None:
            state['descriptors'] = self._descriptors
        return {name: value.clone() for name, value in state.items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore a state produced by ``state_dict`` (any device) onto this graph's device."""
        state = {name: value.to(self.device) for name, value in state.items()}
        (self._num_insertions, self._merge_time, self._validity_level, self._num_merged,
         self._active_word) = (int(v) for v in state['counters'])
        self._active_bits = state['active_observations']
        self._frozen_keys, self._frozen_words = state['frozen_keys'], state['frozen_words']
        self._frames = state['frames']
        self._weights, self._created = state['weights'], state['created']
        self._first_frame, self._score_sum = state['first_frame'], state['score_sum']
        self._has_descriptor = state['has_descriptor']
        self._merged_of_raw = state['merged_of_raw']
        self._features = state.get('features')
        self._descriptors = state.get('descriptors')
        num = self._num_merged
        self._containment = torch.zeros((max(num, 16),) * 2, device=self.device)
        self._containment[:num, :num] = state['containment']
        self._set_incidence(state['incidence_mid'], state['incidence_slot'])

    def state_nbytes(self) -> Dict[str, int]:
        """Bytes of persistent device state by part (capacities included, no transients)."""
        def nbytes(*tensors) -> int:
            return sum(t.numel() * t.element_size() for t in tensors if t is not None)
        return {
            'observations': nbytes(self._active_bits, self._frozen_keys, self._frozen_words),
            'incidence': nbytes(self._mid_buffer, self._slot_buffer, self._by_slot,
                                self._by_slot_mid, self._delta_slot, self._delta_mid,
                                self._voxel_counts, self._mask_ptr),
            'containment': nbytes(self._containment),
            'per_mask': nbytes(self._frames, self._weights, self._created, self._first_frame,
                               self._score_sum, self._features, self._descriptors,
                               self._has_descriptor, self._merged_of_raw),
        }

    def _long(self, shape) -> torch.Tensor:
        """Return int64 zeros of ``shape`` on the device."""
        return torch.zeros(shape, dtype=torch.int64, device=self.device)
