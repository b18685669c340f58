"""Packed integer voxel keys and a growing GPU hash from keys to stable slots.

A voxel is addressed by the integer lattice coordinate of its lower corner,
``ijk = floor(p / voxel_size)``, packed into one int64 key (21 bits per axis, offset by
2^20 so that every coordinate in ``[-2^20, 2^20)`` gives a non-negative key). The key does
not depend on any hash-map internals, so it never changes when a table rehashes.
"""

from typing import Dict, List, NamedTuple, Optional, Tuple, Union
import warnings

import torch

from onlineanyseg_ros.core.cuda_graphs import capture

COORD_BITS = 21
COORD_OFFSET = 1 << (COORD_BITS - 1)
COORD_MASK = (1 << COORD_BITS) - 1
EMPTY_KEY = -1

# Odd multipliers below 2^27 keep every product below 2^48 and 2^62: no int64 overflow.
_AXIS_MULTIPLIERS = (73856093, 19349663, 83492791)
_MIX_MULTIPLIER = 0x5BD1E995
_LOW31 = (1 << 31) - 1
_NO_KEY = (1 << 63) - 1  # sorts after every packed key
# Buckets scanned per key and placement round; insertion rounds between two host checks
# (sync-free mode). Each round is ~25 kernel launches; on a 300-frame room, keys still
# waited after 3 rounds in 1 of 277 inserts, as after 4, and after 2 rounds in 9.
_INSERT_WINDOW = 16
_ROUNDS_PER_CHECK = 3
# A key farther than this from its home bucket makes the table grow (lookups scan this far).
_MAX_DISPLACEMENT = 64
# Captured inserts scan the lookup window rounded up to a multiple of this.
_GRAPH_WINDOW_STEP = 8
# New keys placed before their count is read (sync-free insert), at least: twice the
# recent calls' counts, halving per call, and never below this.
_MIN_PLACEMENT_BOUND = 1 << 12
# Keys x window entries per lookup chunk (bounds the temporary memory to ~70 MB).
_LOOKUP_ENTRIES = 1 << 22


def pack_keys(ijk: torch.Tensor) -> torch.Tensor:
    """Pack lattice coordinates into keys.

    Args:
        ijk: int64 ``(N, 3)`` voxel coordinates, each in ``[-2^20, 2^20)`` (about +-26 km at
            2.5 cm voxels); values outside that range alias other voxels.

    Returns:
        int64 ``(N,)`` keys ``((i + 2^20) << 42) | ((j + 2^20) << 21) | (k + 2^20)`` on the
        device of ``ijk``.

    """
    shifted = ijk.to(torch.int64) + COORD_OFFSET
    return ((shifted[:, 0] << (2 * COORD_BITS)) | (shifted[:, 1] << COORD_BITS)
            | shifted[:, 2])


def unpack_keys(keys: torch.Tensor) -> torch.Tensor:
    """Invert ``pack_keys``: int64 ``(N,)`` keys to int64 ``(N, 3)`` lattice coordinates."""
    return torch.stack(((keys >> (2 * COORD_BITS)) & COORD_MASK,
                        (keys >> COORD_BITS) & COORD_MASK,
                        keys & COORD_MASK), dim=-1) - COORD_OFFSET


def voxel_keys(points: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """Return the int64 ``(N,)`` keys of the voxels containing float ``(N, 3)`` points (m).

    The voxel of ``p`` is ``floor(p / voxel_size)`` evaluated in the dtype of ``points``.
    """
    return pack_keys(torch.floor(points / voxel_size).to(torch.int64))


def _hash(keys: torch.Tensor, mask: int) -> torch.Tensor:
    """Spread int64 keys over ``[0, mask]`` (``mask + 1`` a power of two) without overflow."""
    mixed = ((keys & COORD_MASK) * _AXIS_MULTIPLIERS[0]
             ^ ((keys >> COORD_BITS) & COORD_MASK) * _AXIS_MULTIPLIERS[1]
             ^ ((keys >> (2 * COORD_BITS)) & COORD_MASK) * _AXIS_MULTIPLIERS[2])
    mixed = mixed ^ (mixed >> 23)
    mixed = (mixed & _LOW31) * _MIX_MULTIPLIER
    mixed = mixed ^ (mixed >> 29)
    return mixed & mask


def _next_power_of_two(value: int) -> int:
    return 1 << max(int(value) - 1, 1).bit_length()


class VoxelHash:
    """Map int64 voxel keys to stable, append-only slots ``0..num_slots-1`` on one device.

    Slots are handed out in first-occurrence order and never change, so other structures
    can index per-slot arrays by them. The table is a vectorised open-addressing hash with
    linear probing (load factor <= ``max_load``) and bounded displacement: every key sits
    within ``window`` buckets of its home bucket, so a lookup is one gather of that window
    per key, with no data-dependent loop and no host sync. Insertion places all new keys
    at once in rounds (each key claims the first empty bucket of its window; racing claims
    are resolved by reading back which key landed) and checks for stragglers once every
    few rounds. The table doubles (and rehashes the same slots) when the load or the
    displacement bound would be exceeded. Keys must be non-negative (``pack_keys`` output).

    Host syncs: none per ``lookup``; one per ``insert`` in the ``sync_free`` mode (the CUDA
    default), which masks finished work instead of compacting it: every entry is looked
    up, the new keys are numbered and placed for ``_ROUNDS_PER_CHECK`` rounds, and a single
    read returns their count with the placement progress (more reads only when keys still
    wait after those rounds, a call brings more new keys than the placement bound, or the
    table grows). Otherwise (the CPU default, where a sync costs nothing) finished work is
    compacted away: runs of equal keys collapse first, lookups skip the window scan for
    keys settled by their home bucket, and insertion checks after every round.
    """

    def __init__(self, device: Union[str, torch.device] = 'cpu',
                 initial_capacity: int = 1 << 16, max_load: float = 0.5,
                 sync_free: Optional[bool] = None, use_graphs: Optional[bool] = None) -> None:
        """Create an empty hash that holds ``initial_capacity`` keys before its first growth.

        ``sync_free`` (default: on CUDA) masks finished work instead of compacting it, which
        avoids host syncs but does more arithmetic; on the CPU compaction costs nothing.
        ``use_graphs`` (default: sync-free on CUDA) replays the sync-free insert's work up
        to its read from a CUDA graph per input shape (see ``_InsertGraph``); with
        ``use_graphs`` on the CPU the same static-buffer path runs eagerly (tests).
        """
        if initial_capacity < 1:
            raise ValueError(f'initial_capacity must be >= 1, got {initial_capacity}')
        if not 0.0 < max_load <= 0.9:
            raise ValueError(f'max_load must be in (0, 0.9], got {max_load}')
        self.device = torch.device(device)
        self.max_load = max_load
        self._initial_capacity = int(initial_capacity)
        self.sync_free = self.device.type == 'cuda' if sync_free is None else bool(sync_free)
        self.use_graphs = (self.sync_free and self.device.type == 'cuda' if use_graphs is None
                           else bool(use_graphs) and self.sync_free)
        self._rounds_per_check = _ROUNDS_PER_CHECK if self.sync_free else 1
        # Captured inserts by (keys, has valid, extra values); None: the shape ran once
        # eagerly (warm-up), the next call captures.
        self._insert_graphs: Dict[Tuple[int, bool, int], Optional['_InsertGraph']] = {}
        self.graph_stats = {'replays': 0, 'captures': 0}
        self.reset()

    def reset(self) -> None:
        """Forget every key (slots restart at 0)."""
        self._slot_keys = torch.empty(self._initial_capacity, dtype=torch.int64,
                                      device=self.device)
        self._num_slots = 0
        self._placement_bound = _MIN_PLACEMENT_BOUND
        self._new_table(_next_power_of_two(self._initial_capacity / self.max_load))

    def _new_table(self, table_size: int) -> None:
        """Allocate ``table_size`` empty buckets plus one scratch bucket at the end.

        Keys that have nothing to write in a placement round write to the scratch bucket,
        which no probe window ever reaches, instead of being filtered out (a host sync).
        """
        self._table_keys = torch.full((table_size + 1,), EMPTY_KEY, dtype=torch.int64,
                                      device=self.device)
        self._table_slots = torch.full_like(self._table_keys, -1)
        self._window = 1
        self._insert_graphs.clear()

    @property
    def num_slots(self) -> int:
        """Number of keys (and slots) stored."""
        return self._num_slots

    @property
    def keys(self) -> torch.Tensor:
        """Int64 ``(num_slots,)`` key of each slot (a view; do not modify)."""
        return self._slot_keys[:self._num_slots]

    @property
    def table_size(self) -> int:
        """Number of buckets of the open-addressing table (a power of two)."""
        return self._table_keys.numel() - 1

    @property
    def window(self) -> int:
        """Buckets a lookup scans from a key's home bucket (largest displacement + 1)."""
        return self._window

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """Return the int64 slots of int64 ``keys`` (any shape), -1 where absent."""
        flat = keys.reshape(-1).to(device=self.device, dtype=torch.int64)
        return self._probe_lookup(flat).reshape(keys.shape)

    def insert(self, keys: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Add int64 ``keys`` (any shape, duplicates allowed); return their slots (same shape).

        New keys get slots ``num_slots, num_slots + 1, ...`` in order of first occurrence.
        ``valid``: bool, the shape of ``keys``, or None (all valid); invalid entries are not
        inserted, their keys may hold anything, and their slot is -1.
        """
        return self.insert_reading(keys, valid)[0]

    def insert_reading(self, keys: torch.Tensor, valid: Optional[torch.Tensor] = None,
                       extra: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, List[int]]:
        """``insert``, and read the int64 device tensor ``extra`` back in its host sync.

        Returns the slots and ``extra``'s values (flattened; ``[]`` without ``extra``). A
        caller with sizes of its own to read saves a sync (sync-free mode; otherwise
        ``extra`` is read on its own).
        """
        extra = (torch.zeros(0, dtype=torch.int64, device=self.device) if extra is None
                 else extra.reshape(-1).to(device=self.device, dtype=torch.int64))
        flat = keys.reshape(-1).to(device=self.device, dtype=torch.int64)
        if valid is not None:
            if valid.shape != keys.shape:
                raise ValueError(f'valid {tuple(valid.shape)} does not match keys '
                                 f'{tuple(keys.shape)}')
            valid = valid.reshape(-1).to(device=self.device, dtype=torch.bool)
        extra_values = None
        if flat.numel() == 0:
            slots = flat.clone()
        elif self.sync_free:
            slots, extra_values = self._insert_sync_free(flat, valid, extra)
        elif valid is not None:
            rows = torch.nonzero(valid).squeeze(1)
            slots = torch.full_like(flat, -1)
            slots[rows] = self._insert_compact(flat[rows])
        else:
            slots = self._insert_compact(flat)
        if extra_values is None:
            extra_values = extra.tolist() if extra.numel() else []
        return slots.reshape(keys.shape), extra_values

    def _insert_compact(self, flat: torch.Tensor) -> torch.Tensor:
        """``insert`` of int64 ``(n,)`` keys by compaction (three host syncs, fewer entries)."""
        if flat.numel() == 0:
            return flat.clone()
        # Runs of equal keys (neighbouring pixels, sorted key lists) collapse in O(n) before
        # the lookup and the sort of the absent keys.
        run_keys, run_of_key = torch.unique_consecutive(flat, return_inverse=True)
        slots = self._probe_lookup(run_keys)
        absent = torch.nonzero(slots < 0).squeeze(1)
        sorted_keys, order_of_absent = torch.sort(run_keys[absent], stable=True)
        order = absent[order_of_absent]
        new = self._number_new_keys(sorted_keys, order, self._num_slots)
        num_new, has_negative = torch.stack(
            (new.count, (run_keys < 0).any().to(torch.int64))).tolist()
        if has_negative:
            raise ValueError('VoxelHash keys must be non-negative packed voxel keys')
        if num_new:
            slots[order] = torch.where(new.is_new, new.slot_of_sorted, slots[order])
            self._append(run_keys[new.first_seen[:num_new]])
        return slots[run_of_key]

    def _insert_sync_free(self, flat: torch.Tensor, valid: Optional[torch.Tensor],
                          extra: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
        """``insert_reading`` of int64 ``(n,)`` keys with one host sync (usually).

        Every entry is looked up and sorted, with finished or invalid entries masked
        instead of compacted. The new keys are placed (a few rounds) before their number is
        known: the first ``_placement_bound`` of them in slot order, a bound that follows
        the recent calls' counts (all of them when the work is replayed from a graph, whose
        shapes are fixed). One read then returns their number, the placement progress, the
        negative-key check and the caller's ``extra`` together. Whatever that read says is
        left to do (load, displacement, keys waiting or past the bound, negative keys) is
        settled as ``_append`` would: a rehash, or more placement rounds.
        """
        n = flat.numel()
        first_slot = self._num_slots
        self._reserve_slots(first_slot + n)
        if self.use_graphs:
            launched = self._launch_from_graph(flat, valid, extra)
            bound = n
        else:
            bound = min(n, self._placement_bound)
            launched = self._launch_insert(flat, valid, extra, first_slot, bound)
        values = launched.read.tolist()
        num_new, has_negative, waiting, farthest = values[:4]
        if has_negative:
            self._rehash(self.table_size)  # drops this call's placements
            raise ValueError('VoxelHash keys must be non-negative packed voxel keys')
        self._num_slots = needed = first_slot + num_new
        self._placement_bound = max(_MIN_PLACEMENT_BOUND, 2 * num_new,
                                    self._placement_bound // 2)
        if needed > self.max_load * self.table_size:
            self._rehash(_next_power_of_two(needed / self.max_load))
        elif not self._settle(launched.placement, waiting, farthest):
            self._rehash(2 * self.table_size)
        elif num_new > bound and not self._place(launched.new_keys[bound:num_new],
                                                 launched.new_slots[bound:num_new]):
            self._rehash(2 * self.table_size)
        return launched.slots, values[4:]

    def _launch_insert(self, flat: torch.Tensor, valid: Optional[torch.Tensor],
                       extra: torch.Tensor, first_slot: Union[int, torch.Tensor],
                       bound: int, window: Optional[int] = None) -> '_LaunchedInsert':
        """Queue the sync-free insert's work up to its read; no host sync, fixed shapes.

        ``first_slot``: the slot of the first new key, an int or an int64 device scalar
        (graphs); the slot-key buffer must hold ``first_slot + n`` slots. The first
        ``bound`` new keys in slot order are placed (``_rounds_per_check`` rounds). The
        lookup scans ``window`` buckets (default: ``self.window``). The table and the slot
        keys are written in place.
        """
        n = flat.numel()
        home = _hash(flat, self.table_size - 1)
        slots = self._window_lookup(flat, home, window)
        candidate = slots < 0 if valid is None else (slots < 0) & valid
        negative = (candidate & (flat < 0)).any()
        candidate &= flat >= 0
        sorted_keys, order = torch.sort(torch.where(candidate, flat, _NO_KEY), stable=True)
        new = self._number_new_keys(sorted_keys, order, first_slot)
        slots[order] = torch.where(new.is_new, new.slot_of_sorted, slots[order])
        if valid is not None:
            # Masked-out entries may hold any key, present ones included.
            slots = torch.where(valid, slots, -1)
        # The new keys in slot order; ranks past their count hold _NO_KEY and stay unplaced.
        first_seen = new.first_seen
        is_rank = first_seen < n
        entry = first_seen.clamp(max=n - 1)
        new_keys = torch.where(is_rank, flat[entry], _NO_KEY)
        new_slots = first_slot + torch.arange(n, device=self.device)
        self._slot_keys.index_copy_(0, new_slots, new_keys)
        # The lookup's home buckets serve the placement (padding ranks are settled).
        placement = self._claim(new_keys[:bound], new_slots[:bound], settled=~is_rank[:bound],
                                home=home[entry[:bound]])
        read = torch.cat((torch.stack((new.count, negative.to(torch.int64),
                                       *placement.progress(self.table_size))), extra))
        return _LaunchedInsert(slots, new_keys, new_slots, placement, read)

    def _launch_from_graph(self, flat: torch.Tensor, valid: Optional[torch.Tensor],
                           extra: torch.Tensor) -> '_LaunchedInsert':
        """``_launch_insert`` of all new keys, replayed from the graph of this input shape.

        The first call of a shape runs eagerly (it warms the operators up); the second
        captures. Only the returned slots survive the next replay.
        """
        shape = (flat.numel(), valid is not None, extra.numel())
        graph = self._insert_graphs.get(shape, False)
        if graph is False:
            self._insert_graphs[shape] = None
            return self._launch_insert(flat, valid, extra, self._num_slots, flat.numel())
        if graph is None or graph.window < self._window:
            # Captured lookups scan a window rounded up: it widens a bucket at a time as
            # the table fills, and each capture costs host time.
            window = _GRAPH_WINDOW_STEP * -(-self._window // _GRAPH_WINDOW_STEP)
            try:
                graph = self._insert_graphs[shape] = _InsertGraph(self, *shape, window)
            except RuntimeError as error:
                # A driver or an operator that graphs do not support: launch op by op.
                self.use_graphs = False
                self._insert_graphs.clear()
                warnings.warn(f'VoxelHash: CUDA graph capture failed, inserting without '
                              f'graphs from now on ({error})', RuntimeWarning)
                return self._launch_insert(flat, valid, extra, self._num_slots, flat.numel())
            self.graph_stats['captures'] += 1
        self.graph_stats['replays'] += 1
        return graph.replay(flat, valid, extra, self._num_slots)

    def _number_new_keys(self, sorted_keys: torch.Tensor, order: torch.Tensor,
                         first_slot: Union[int, torch.Tensor]) -> '_NewKeys':
        """Slots for the distinct keys among ``sorted_keys`` (``_NO_KEY`` = not new).

        Args:
            sorted_keys: int64 ``(m,)`` keys, stably sorted, ``_NO_KEY`` for entries that
                are not new (they sort last).
            order: int64 ``(m,)`` entry index of each sorted key (the stable sort's order).
            first_slot: slot of the first new key (int, or int64 device scalar).

        Returns:
            ``_NewKeys``: ``is_new`` and ``slot_of_sorted`` (m,) per sorted entry;
            ``first_seen`` (m,): by slot, the entry index of each new key's first
            occurrence, ``_NO_KEY`` past the new keys; ``count``: a device scalar.

        """
        m = sorted_keys.numel()
        is_new = sorted_keys != _NO_KEY
        starts = is_new.clone()
        starts[1:] &= sorted_keys[1:] != sorted_keys[:-1]
        new_of_sorted = torch.cumsum(starts, 0) - 1
        # The stable sort puts each new key's first occurrence at the start of its run.
        first_seen = torch.full((m + 1,), _NO_KEY, dtype=torch.int64, device=self.device)
        first_seen.scatter_(0, torch.where(starts, new_of_sorted, m), order)
        by_first_seen = torch.argsort(first_seen[:m])
        rank = torch.empty_like(by_first_seen)
        rank[by_first_seen] = torch.arange(m, device=self.device)
        slot_of_sorted = first_slot + rank[new_of_sorted.clamp(min=0)]
        return _NewKeys(is_new, slot_of_sorted, first_seen[by_first_seen], starts.sum())

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Return the slot keys (int64 ``(num_slots,)``, CPU); slot ``s`` holds ``keys[s]``."""
        return {'keys': self.keys.cpu().clone()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore from ``state_dict`` output: the same keys get the same slots."""
        keys = state['keys'].to(device=self.device, dtype=torch.int64).reshape(-1)
        if keys.numel() != torch.unique(keys).numel():
            raise ValueError('VoxelHash state holds duplicate keys')
        self.reset()
        self.insert(keys)

    def _reserve_slots(self, needed: int) -> None:
        """Grow the slot-key buffer (by doubling) to hold ``needed`` slots."""
        if needed > self._slot_keys.numel():
            grown = torch.empty(_next_power_of_two(needed), dtype=torch.int64,
                                device=self.device)
            grown[:self._num_slots] = self.keys
            self._slot_keys = grown
            self._insert_graphs.clear()  # they write the former buffer

    def _append(self, new_keys: torch.Tensor) -> None:
        """Give distinct, absent ``new_keys`` the next slots, in order, and place them."""
        first_slot = self._num_slots
        needed = first_slot + new_keys.numel()
        self._reserve_slots(needed)
        self._slot_keys[first_slot:needed] = new_keys
        self._num_slots = needed
        if needed > self.max_load * self.table_size:
            self._rehash(_next_power_of_two(needed / self.max_load))
        elif not self._place(new_keys, torch.arange(first_slot, needed, device=self.device)):
            self._rehash(2 * self.table_size)

    def _rehash(self, table_size: int) -> None:
        """Rebuild the table with at least ``table_size`` buckets; every key keeps its slot.

        The size doubles again while some key would sit farther than ``_MAX_DISPLACEMENT``.
        """
        slots = torch.arange(self._num_slots, device=self.device)
        self._new_table(table_size)
        while not self._place(self.keys, slots):
            self._new_table(2 * self.table_size)

    def _probe_lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """Return the slots of int64 ``(n,)`` keys, -1 where absent.

        Sync-free, every key scans its whole window. Otherwise keys found in (or absent by)
        their home bucket skip the window scan, at the cost of one compaction.
        """
        home = _hash(keys, self.table_size - 1)
        if self.sync_free:
            return self._window_lookup(keys, home)
        stored = self._table_keys[home]
        slots = torch.where(stored == keys, self._table_slots[home], -1)
        searching = torch.nonzero((stored != keys) & (stored != EMPTY_KEY)).squeeze(1)
        if searching.numel() > 0:
            slots[searching] = self._window_lookup(keys[searching], home[searching])
        return slots

    def _window_lookup(self, keys: torch.Tensor, home: torch.Tensor,
                       window: Optional[int] = None) -> torch.Tensor:
        """Slots of int64 ``(n,)`` keys found within ``window`` buckets of home, else -1.

        ``home``: int64 ``(n,)`` home bucket of each key (``_hash``). ``window``: buckets
        to scan, at least ``self.window`` (default); a wider scan finds the same slots.
        """
        mask = self.table_size - 1
        window = self._window if window is None else window
        offsets = torch.arange(window, device=self.device)
        slots = torch.empty_like(keys)
        chunk = max(_LOOKUP_ENTRIES // window, 1)
        for start in range(0, keys.numel(), chunk):
            part = keys[start:start + chunk]
            window = (home[start:start + chunk, None] + offsets) & mask
            match = self._table_keys[window] == part[:, None]
            bucket = window.gather(1, match.to(torch.uint8).argmax(1, keepdim=True)).squeeze(1)
            slots[start:start + chunk] = torch.where(match.any(1), self._table_slots[bucket], -1)
        return slots

    def _place(self, keys: torch.Tensor, slots: torch.Tensor) -> bool:
        """Store distinct, absent ``keys`` with their ``slots``; False when too crowded.

        Too crowded: a key found no empty bucket within ``_MAX_DISPLACEMENT`` of its home
        bucket; the caller then rebuilds a larger table.
        """
        if keys.numel() == 0:
            return True
        placement = self._claim(keys, slots)
        waiting, farthest = torch.stack(placement.progress(self.table_size)).tolist()
        return self._settle(placement, waiting, farthest)

    def _claim(self, keys: torch.Tensor, slots: torch.Tensor,
               settled: Optional[torch.Tensor] = None, home: Optional[torch.Tensor] = None,
               start: Optional[torch.Tensor] = None) -> '_Placement':
        """Run ``_rounds_per_check`` placement rounds for int64 ``(n,)`` keys and slots.

        Each round, every unplaced key claims the first empty bucket of its current window
        (``_INSERT_WINDOW`` buckets from its home bucket + a start that moves on past full
        windows); of several keys claiming one bucket, the one whose write landed keeps it
        and the others try again. Buckets are only ever filled, so each key still sits at
        the first empty bucket from its home at the time it was placed: linear probing's
        invariant, which lets ``_probe_lookup`` scan a fixed window.

        ``settled``: bool ``(n,)`` entries not to place (padding); ``home`` and ``start``
        continue an earlier ``_Placement``.
        """
        mask, scratch = self.table_size - 1, self.table_size
        home = _hash(keys, mask) if home is None else home
        start = torch.zeros_like(keys) if start is None else start
        window_offsets = torch.arange(_INSERT_WINDOW, device=self.device)
        bucket = home.clone()
        placed = (torch.zeros_like(keys, dtype=torch.bool) if settled is None
                  else settled.clone())
        for _ in range(self._rounds_per_check):
            window = (home + start)[:, None] + window_offsets & mask
            empty = self._table_keys[window] == EMPTY_KEY
            has_empty = empty.any(1)
            claims = ~placed & has_empty
            target = torch.where(claims, window.gather(
                1, empty.to(torch.uint8).argmax(1, keepdim=True)).squeeze(1), scratch)
            self._table_keys[target] = keys
            won = claims & (self._table_keys[target] == keys)
            self._table_slots[torch.where(won, target, scratch)] = slots
            bucket = torch.where(won, target, bucket)
            placed |= won
            start = torch.where(placed | has_empty, start, start + _INSERT_WINDOW)
        return _Placement(keys, slots, home, start, bucket, placed)

    def _settle(self, placement: '_Placement', waiting: int, farthest: int) -> bool:
        """Finish a placement whose progress was read: more rounds while keys wait.

        Returns False when a key would sit ``_MAX_DISPLACEMENT`` or more from home.
        """
        while farthest < _MAX_DISPLACEMENT:
            if waiting == 0:
                # Graphs whose lookups scan less are recaptured when next used.
                self._window = max(self._window, farthest + 1)
                return True
            # Only the keys still waiting go on (their number is known now).
            keep = torch.nonzero(~placement.placed).squeeze(1)
            placement = self._claim(placement.keys[keep], placement.slots[keep],
                                    home=placement.home[keep], start=placement.start[keep])
            waiting, round_farthest = torch.stack(
                placement.progress(self.table_size)).tolist()
            farthest = max(farthest, round_farthest)
        return False


class _NewKeys(NamedTuple):
    """Numbering of the new keys of one insert (``VoxelHash._number_new_keys``)."""

    is_new: torch.Tensor
    slot_of_sorted: torch.Tensor
    first_seen: torch.Tensor
    count: torch.Tensor


class _Placement(NamedTuple):
    """State of keys being placed: int64 ``(n,)`` each, ``placed`` bool ``(n,)``."""

    keys: torch.Tensor
    slots: torch.Tensor
    home: torch.Tensor
    start: torch.Tensor
    bucket: torch.Tensor
    placed: torch.Tensor

    def progress(self, table_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Device scalars: keys still waiting, and the farthest displacement so far."""
        displacement = (self.bucket - self.home) & (table_size - 1)
        return (~self.placed).sum(), torch.maximum(self.start, displacement).max()


class _LaunchedInsert(NamedTuple):
    """The sync-free insert's state at its read (``VoxelHash._launch_insert``).

    ``slots``, ``new_keys`` (slot order, ``_NO_KEY`` past the new ones) and ``new_slots``
    int64 ``(n,)``; the placement of the first ``bound`` new keys; ``read``: the int64
    device vector to read (count, negative flag, placement progress, extra values).
    """

    slots: torch.Tensor
    new_keys: torch.Tensor
    new_slots: torch.Tensor
    placement: _Placement
    read: torch.Tensor


class _InsertGraph:
    """``VoxelHash._launch_insert`` of one input shape, captured in a CUDA graph.

    The insert is launch-bound (about 200 small kernels per call); a replay launches them
    at once. The graph writes the hash's table and slot-key buffer in place, so the hash
    drops its graphs whenever it replaces either; a graph whose lookups scan ``window``
    buckets serves while the hash's window is no wider. Inputs are copied into static
    buffers, the first new slot included (a device scalar). Only the slots outlive the
    call, so only they are cloned out. Without CUDA the same buffers run ``_launch_insert``
    eagerly per call. A failed capture makes the hash warn once and insert without graphs.
    """

    def __init__(self, voxel_hash: VoxelHash, size: int, has_valid: bool,
                 extra_size: int, window: int) -> None:
        device = voxel_hash.device
        self._hash = voxel_hash
        self.window = window
        self._keys = torch.zeros(size, dtype=torch.int64, device=device)
        self._valid = torch.zeros(size, dtype=torch.bool, device=device) if has_valid else None
        self._extra = torch.zeros(extra_size, dtype=torch.int64, device=device)
        self._first_slot = torch.zeros((), dtype=torch.int64, device=device)
        self._graph = None
        self._outputs: Optional[_LaunchedInsert] = None
        if device.type == 'cuda':
            self._graph = torch.cuda.CUDAGraph()
            # Capturing records the kernels without running them: the hash is unchanged.
            with capture(self._graph, device):
                self._outputs = self._launch()

    def _launch(self) -> _LaunchedInsert:
        return self._hash._launch_insert(self._keys, self._valid, self._extra,
                                         self._first_slot, self._keys.numel(), self.window)

    def replay(self, keys: torch.Tensor, valid: Optional[torch.Tensor], extra: torch.Tensor,
               first_slot: int) -> _LaunchedInsert:
        """Run the insert's work for these inputs; the slots are a copy, the rest static."""
        self._keys.copy_(keys, non_blocking=True)
        if self._valid is not None:
            self._valid.copy_(valid, non_blocking=True)
        self._extra.copy_(extra, non_blocking=True)
        self._first_slot.fill_(first_slot)
        if self._graph is None:
            outputs = self._launch()
        else:
            self._graph.replay()
            outputs = self._outputs
        return outputs._replace(slots=outputs.slots.clone())
