"""Packed integer voxel keys and a growing GPU hash from keys to stable slots.

A voxel is addressed by the integer lattice coordinate of its lower corner,
``ijk = floor(p / voxel_size)``, packed into one int64 key (21 bits per axis, offset by
2^20 so that every coordinate in ``[-2^20, 2^20)`` gives a non-negative key). The key does
not depend on any hash-map internals, so it never changes when a table rehashes.
"""

from typing import Dict, Union

import torch

COORD_BITS = 21
COORD_OFFSET = 1 << (COORD_BITS - 1)
COORD_MASK = (1 << COORD_BITS) - 1
EMPTY_KEY = -1

# Odd multipliers below 2^27 keep every product below 2^48 and 2^62: no int64 overflow.
_AXIS_MULTIPLIERS = (73856093, 19349663, 83492791)
_MIX_MULTIPLIER = 0x5BD1E995
_LOW31 = (1 << 31) - 1
_PROBE_WINDOW = 16


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
    linear probing (load factor <= ``max_load``); every probe round is one batch of tensor
    ops over the keys still searching, so a call costs ``O(batch log batch)`` plus
    ``O(batch)`` per probe round, independent of the table size. It doubles (and rehashes
    the same slots) when full. Keys must be non-negative (``pack_keys`` output).

    Per-call host syncs: the probe loops test for remaining work once per round, and
    ``insert`` reads the number of new keys (both unavoidable with data-dependent sizes).
    """

    def __init__(self, device: Union[str, torch.device] = 'cpu',
                 initial_capacity: int = 1 << 16, max_load: float = 0.5) -> None:
        """Create an empty hash that holds ``initial_capacity`` keys before its first growth."""
        if initial_capacity < 1:
            raise ValueError(f'initial_capacity must be >= 1, got {initial_capacity}')
        if not 0.0 < max_load <= 0.9:
            raise ValueError(f'max_load must be in (0, 0.9], got {max_load}')
        self.device = torch.device(device)
        self.max_load = max_load
        self._initial_capacity = int(initial_capacity)
        self.reset()

    def reset(self) -> None:
        """Forget every key (slots restart at 0)."""
        table_size = _next_power_of_two(self._initial_capacity / self.max_load)
        self._table_keys = torch.full((table_size,), EMPTY_KEY, dtype=torch.int64,
                                      device=self.device)
        self._table_slots = torch.full_like(self._table_keys, -1)
        self._slot_keys = torch.empty(self._initial_capacity, dtype=torch.int64,
                                      device=self.device)
        self._num_slots = 0

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
        return self._table_keys.numel()

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """Return the int64 slots of int64 ``keys`` (any shape), -1 where absent."""
        flat = keys.reshape(-1).to(device=self.device, dtype=torch.int64)
        return self._probe_lookup(flat).reshape(keys.shape)

    def insert(self, keys: torch.Tensor) -> torch.Tensor:
        """Add int64 ``keys`` (any shape, duplicates allowed); return their slots (same shape).

        New keys get slots ``num_slots, num_slots + 1, ...`` in order of first occurrence.
        """
        flat = keys.reshape(-1).to(device=self.device, dtype=torch.int64)
        if flat.numel() == 0:
            return torch.empty(keys.shape, dtype=torch.int64, device=self.device)
        if bool((flat < 0).any()):
            raise ValueError('VoxelHash keys must be non-negative packed voxel keys')
        # Runs of equal keys (neighbouring pixels, sorted key lists) collapse in O(n); a full
        # sort is only paid for the keys that are absent, usually a small share.
        run_keys, run_of_key = torch.unique_consecutive(flat, return_inverse=True)
        slots = self._probe_lookup(run_keys)
        absent = torch.nonzero(slots < 0).squeeze(1)
        if absent.numel() > 0:
            new_keys, inverse = torch.unique(run_keys[absent], return_inverse=True)
            num_new = new_keys.numel()
            first_seen = torch.full_like(new_keys, absent.numel()).scatter_reduce_(
                0, inverse, torch.arange(absent.numel(), device=self.device), reduce='amin')
            order = torch.argsort(first_seen)
            rank = torch.empty_like(order)
            rank[order] = torch.arange(num_new, device=self.device)
            new_slots = torch.arange(self._num_slots, self._num_slots + num_new,
                                     device=self.device)
            slots[absent] = new_slots[rank[inverse]]
            self._append(new_keys[order], new_slots)
        return slots[run_of_key].reshape(keys.shape)

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

    def _append(self, new_keys: torch.Tensor, new_slots: torch.Tensor) -> None:
        """Store keys that are absent from the table under the given consecutive slots."""
        needed = self._num_slots + new_keys.numel()
        if needed > self._slot_keys.numel():
            grown = torch.empty(_next_power_of_two(needed), dtype=torch.int64,
                                device=self.device)
            grown[:self._num_slots] = self.keys
            self._slot_keys = grown
        self._slot_keys[self._num_slots:needed] = new_keys
        self._num_slots = needed
        if needed > self.max_load * self.table_size:
            self._rehash(_next_power_of_two(needed / self.max_load))
        else:
            self._probe_insert(new_keys, new_slots)

    def _rehash(self, table_size: int) -> None:
        """Rebuild the table with ``table_size`` buckets; every key keeps its slot."""
        self._table_keys = torch.full((table_size,), EMPTY_KEY, dtype=torch.int64,
                                      device=self.device)
        self._table_slots = torch.full_like(self._table_keys, -1)
        self._probe_insert(self.keys, torch.arange(self._num_slots, device=self.device))

    def _probe_lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """Linear-probe all ``keys`` at once.

        The first round reads each key's home bucket only (most keys end there); later
        rounds read a window of ``_PROBE_WINDOW`` buckets per remaining key, so even long
        probe runs take few rounds.
        """
        mask = self.table_size - 1
        positions = _hash(keys, mask)
        # Home buckets first, without windows: most keys end here.
        stored = self._table_keys[positions]
        slots = torch.where(stored == keys, self._table_slots[positions], -1)
        searching = torch.nonzero((stored != keys) & (stored != EMPTY_KEY)).squeeze(1)
        keys = keys[searching]
        positions = (positions[searching] + 1) & mask
        width = _PROBE_WINDOW
        while searching.numel() > 0:
            window = (positions[:, None] + torch.arange(width, device=self.device)) & mask
            stored = self._table_keys[window]
            no_hit = torch.full_like(positions, width)
            match = stored == keys[:, None]
            first_match = torch.where(match.any(1), match.to(torch.uint8).argmax(1), no_hit)
            empty = stored == EMPTY_KEY
            first_empty = torch.where(empty.any(1), empty.to(torch.uint8).argmax(1), no_hit)
            # Linear probing never stores a key past an empty bucket of its run.
            found = first_match < first_empty
            bucket = window.gather(1, first_match.clamp(max=width - 1)[:, None]).squeeze(1)
            slots[searching[found]] = self._table_slots[bucket[found]]
            going_on = torch.nonzero(~found & (first_empty == width)).squeeze(1)
            searching = searching[going_on]
            keys = keys[going_on]
            positions = (positions[going_on] + width) & mask
        return slots

    def _probe_insert(self, keys: torch.Tensor, slots: torch.Tensor) -> None:
        """Place distinct, absent ``keys`` with their ``slots`` by linear probing.

        Keys that probe the same free bucket in one round are resolved deterministically:
        the one earliest in ``keys`` wins, the others move on to the next bucket.
        """
        mask = self.table_size - 1
        positions = _hash(keys, mask)
        while keys.numel() > 0:
            free = torch.nonzero(self._table_keys[positions] == EMPTY_KEY).squeeze(1)
            sorted_positions, order = torch.sort(positions[free], stable=True)
            first_claim = torch.ones_like(sorted_positions, dtype=torch.bool)
            first_claim[1:] = sorted_positions[1:] != sorted_positions[:-1]
            winners = free[order[first_claim]]
            self._table_keys[positions[winners]] = keys[winners]
            self._table_slots[positions[winners]] = slots[winners]
            waiting = torch.ones_like(keys, dtype=torch.bool)
            waiting[winners] = False
            waiting = torch.nonzero(waiting).squeeze(1)
            keys, slots = keys[waiting], slots[waiting]
            positions = (positions[waiting] + 1) & mask
