"""ROS-free input queues: colour/depth pairing with pose waiting, and an exact-stamp joiner.

Subscription callbacks only enqueue into these (cheap, bounded, every drop counted); a timer
takes out what is ready. Items are opaque (usually message objects); stamps are integer
nanoseconds of the message headers; ``now_ns`` is any monotonic clock of the caller, used
only for timeouts.
"""

import bisect
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from onlineanyseg_ros.core.config import spec, validate_config
from onlineanyseg_ros.core.types import is_rigid_transform

PoseLookup = Callable[[int], Optional[np.ndarray]]
STREAMS = ('color', 'depth')


@dataclass(frozen=True)
class FrameQueueConfig:
    """Limits of the colour/depth pairing queue."""

    pair_tolerance_ns: int = spec(5_000_000, 'Largest colour/depth stamp difference that '
                                  'still pairs (ns).', 0, 10 ** 9)
    max_pending: int = spec(8, 'Colour, depth and paired frames each held at most; the oldest '
                            'is dropped and counted beyond it.', 1, 10 ** 4)
    pose_timeout_ns: int = spec(500_000_000, 'How long a paired frame waits for its pose and '
                                'camera_info before it is dropped and counted (ns).',
                                0, 600 * 10 ** 9)

    def __post_init__(self) -> None:
        """Check every field's type and range."""
        validate_config(self)


@dataclass(frozen=True)
class PairedFrame:
    """A colour/depth pair ready for processing, with its pose and the latest camera_info.

    ``stamp_ns`` is the depth stamp; ``T_world_camera`` is float64 ``(4, 4)`` as returned by
    the pose lookup at that stamp.
    """

    stamp_ns: int
    color: Any
    depth: Any
    camera_info: Any
    T_world_camera: np.ndarray


@dataclass(frozen=True)
class TimeJump:
    """Time went backwards on one stream (bag loop, clock reset); the queue was cleared."""

    stream: str
    previous_stamp_ns: int
    stamp_ns: int
    discarded: int


@dataclass
class FrameQueueCounters:
    """Running totals since construction (``reset`` keeps them)."""

    received_color: int = 0
    received_depth: int = 0
    paired: int = 0
    popped: int = 0
    dropped_full: int = 0
    unmatched_color: int = 0
    unmatched_depth: int = 0
    duplicates: int = 0
    pose_timeouts: int = 0
    pose_skipped: int = 0
    invalid_poses: int = 0
    camera_info_timeouts: int = 0
    time_jumps: int = 0
    discarded_on_jump: int = 0


@dataclass(order=True)
class _Entry:
    """One buffered colour or depth item, ordered by stamp."""

    stamp_ns: int
    arrival_ns: int = field(compare=False)
    item: Any = field(compare=False)


@dataclass(order=True)
class _Pair:
    """A colour/depth pair waiting for its pose, ordered by (depth) stamp."""

    stamp_ns: int
    arrival_ns: int = field(compare=False)
    color: Any = field(compare=False)
    depth: Any = field(compare=False)


class FrameQueue:
    """Pair colour and depth by stamp, then release pairs once their pose is known.

    Each stream must arrive in stamp order: an older stamp than the last one of the same
    stream is a time jump (everything pending is discarded and a ``TimeJump`` returned), an
    equal stamp a duplicate (dropped, counted). A buffered item is unmatched (dropped,
    counted) once the other stream has moved past it by more than the tolerance. Not
    thread-safe: callers that add and pop from different callback groups hold one lock.
    """

    def __init__(self, config: FrameQueueConfig = FrameQueueConfig()) -> None:
        """Create an empty queue."""
        self.config = config
        self._buffers: Dict[str, List[_Entry]] = {stream: [] for stream in STREAMS}
        self._last_stamp: Dict[str, Optional[int]] = dict.fromkeys(STREAMS)
        self._pairs: List[_Pair] = []
        self._camera_info: Any = None
        self._counters = FrameQueueCounters()

    @property
    def counters(self) -> FrameQueueCounters:
        """Return a snapshot of the running totals."""
        return replace(self._counters)

    @property
    def camera_info(self) -> Any:
        """Return the latest camera_info item, or None before the first."""
        return self._camera_info

    def __len__(self) -> int:
        """Return the number of paired frames waiting for their pose."""
        return len(self._pairs)

    def set_camera_info(self, item: Any) -> None:
        """Keep ``item`` as the camera_info of every frame released from now on."""
        self._camera_info = item

    def add_color(self, stamp_ns: int, item: Any, now_ns: int) -> Optional[TimeJump]:
        """Enqueue a colour item; return a TimeJump when its stamp went backwards."""
        return self._add('color', stamp_ns, item, now_ns)

    def add_depth(self, stamp_ns: int, item: Any, now_ns: int) -> Optional[TimeJump]:
        """Enqueue a depth item; return a TimeJump when its stamp went backwards."""
        return self._add('depth', stamp_ns, item, now_ns)

    def reset(self) -> int:
        """Discard every pending item and the stream histories; return how many were dropped.

        The latest camera_info and the counters are kept.
        """
        discarded = len(self._pairs) + sum(len(entries) for entries in self._buffers.values())
        self._pairs.clear()
        for stream in STREAMS:
            self._buffers[stream].clear()
            self._last_stamp[stream] = None
        return discarded

    def pop_ready(self, pose_lookup: PoseLookup, now_ns: int) -> List[PairedFrame]:
        """Return the pairs whose pose is known, oldest first, and drop the expired ones.

        ``pose_lookup(stamp_ns)`` returns ``T_world_camera`` (4x4) or None while unknown. A
        pair waits at most ``pose_timeout_ns`` after pairing; one that is still waiting when
        a later pair becomes ready is dropped (``pose_skipped``), so frames leave in stamp
        order. A non-rigid pose drops its pair (``invalid_poses``). Nothing is released
        before the first camera_info.
        """
        timeout_ns = self.config.pose_timeout_ns
        if self._camera_info is None:
            expired = [p for p in self._pairs if now_ns - p.arrival_ns > timeout_ns]
            self._counters.camera_info_timeouts += len(expired)
            self._pairs = [p for p in self._pairs if now_ns - p.arrival_ns <= timeout_ns]
            return []
        ready: List[PairedFrame] = []
        waiting: List[_Pair] = []
        for pair in self._pairs:
            T_world_camera = pose_lookup(pair.stamp_ns)
            if T_world_camera is not None:
                self._counters.pose_skipped += len(waiting)
                waiting.clear()
                if not is_rigid_transform(T_world_camera):
                    self._counters.invalid_poses += 1
                    continue
                ready.append(PairedFrame(pair.stamp_ns, pair.color, pair.depth,
                                         self._camera_info, np.asarray(T_world_camera)))
            elif now_ns - pair.arrival_ns > timeout_ns:
                self._counters.pose_timeouts += 1
            else:
                waiting.append(pair)
        self._pairs = waiting
        self._counters.popped += len(ready)
        return ready

    def _add(self, stream: str, stamp_ns: int, item: Any, now_ns: int) -> Optional[TimeJump]:
        """Pair ``item`` with the closest counterpart in tolerance, or buffer it."""
        setattr(self._counters, f'received_{stream}',
                getattr(self._counters, f'received_{stream}') + 1)
        jump = None
        last_stamp = self._last_stamp[stream]
        if last_stamp is not None and stamp_ns == last_stamp:
            self._counters.duplicates += 1
            return None
        if last_stamp is not None and stamp_ns < last_stamp:
            discarded = self.reset()
            self._counters.time_jumps += 1
            self._counters.discarded_on_jump += discarded
            jump = TimeJump(stream, last_stamp, stamp_ns, discarded)
        self._last_stamp[stream] = stamp_ns
        other = 'depth' if stream == 'color' else 'color'
        self._expire_unmatched(other, stamp_ns)
        match = self._take_closest(other, stamp_ns)
        if match is None:
            self._insert_bounded(self._buffers[stream], _Entry(stamp_ns, now_ns, item))
            return jump
        color, depth = (item, match.item) if stream == 'color' else (match.item, item)
        depth_stamp_ns = stamp_ns if stream == 'depth' else match.stamp_ns
        self._insert_bounded(self._pairs, _Pair(depth_stamp_ns, now_ns, color, depth))
        self._counters.paired += 1
        return jump

    def _expire_unmatched(self, stream: str, other_stamp_ns: int) -> None:
        """Drop ``stream`` items too old to pair with ``other_stamp_ns`` or any later stamp."""
        entries = self._buffers[stream]
        oldest_pairable = other_stamp_ns - self.config.pair_tolerance_ns
        keep = [entry for entry in entries if entry.stamp_ns >= oldest_pairable]
        unmatched_field = f'unmatched_{stream}'
        setattr(self._counters, unmatched_field,
                getattr(self._counters, unmatched_field) + len(entries) - len(keep))
        self._buffers[stream] = keep

    def _take_closest(self, stream: str, stamp_ns: int) -> Optional[_Entry]:
        """Remove and return the ``stream`` item closest to ``stamp_ns`` within tolerance."""
        entries = self._buffers[stream]
        if not entries:
            return None
        distances = [abs(entry.stamp_ns - stamp_ns) for entry in entries]
        closest = int(np.argmin(distances))
        if distances[closest] > self.config.pair_tolerance_ns:
            return None
        return entries.pop(closest)

    def _insert_bounded(self, entries: list, entry: Any) -> None:
        """Insert in stamp order; beyond ``max_pending`` drop the oldest and count it."""
        bisect.insort(entries, entry)
        while len(entries) > self.config.max_pending:
            entries.pop(0)
            self._counters.dropped_full += 1


@dataclass(frozen=True)
class JoinedBundle:
    """All parts of one stamp: ``parts[key]`` is the item received on ``key``."""

    stamp_ns: int
    parts: Dict[str, Any]


@dataclass
class JoinerCounters:
    """Running totals of an ExactStampJoiner."""

    completed: int = 0
    dropped_full: int = 0
    expired: int = 0
    duplicates: int = 0


class ExactStampJoiner:
    """Join items of several keys (e.g. keyframe topic names) that carry the same stamp.

    At most ``max_pending`` incomplete stamps are held (the oldest stamp is dropped and
    counted beyond it); an incomplete stamp older than ``timeout_ns`` since its first part
    expires (counted). A second part for the same key and stamp is a duplicate (ignored,
    counted).
    """

    def __init__(self, keys: Sequence[str], max_pending: int = 8,
                 timeout_ns: int = 2_000_000_000) -> None:
        """Create a joiner for ``keys`` (at least one, unique)."""
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f'keys must be non-empty and unique, got {list(keys)}')
        if max_pending < 1 or timeout_ns < 0:
            raise ValueError(f'max_pending must be >= 1 and timeout_ns >= 0, got '
                             f'{max_pending} and {timeout_ns}')
        self.keys = tuple(keys)
        self.max_pending = max_pending
        self.timeout_ns = timeout_ns
        self._partial: Dict[int, Dict[str, Any]] = {}
        self._first_arrival: Dict[int, int] = {}
        self._arrival_order: Deque[Tuple[int, int]] = deque()
        self._counters = JoinerCounters()

    @property
    def counters(self) -> JoinerCounters:
        """Return a snapshot of the running totals."""
        return replace(self._counters)

    def __len__(self) -> int:
        """Return the number of incomplete stamps held."""
        return len(self._partial)

    def add(self, key: str, stamp_ns: int, item: Any, now_ns: int) -> Optional[JoinedBundle]:
        """Store one part; return the bundle when it completes its stamp, else None."""
        if key not in self.keys:
            raise ValueError(f'unknown joiner key {key!r}; expected one of {list(self.keys)}')
        self.expire(now_ns)
        parts = self._partial.get(stamp_ns)
        if parts is None:
            parts = self._partial[stamp_ns] = {}
            self._first_arrival[stamp_ns] = now_ns
            self._arrival_order.append((stamp_ns, now_ns))
        if key in parts:
            self._counters.duplicates += 1
            return None
        parts[key] = item
        if len(parts) == len(self.keys):
            self._forget(stamp_ns)
            self._counters.completed += 1
            return JoinedBundle(stamp_ns, parts)
        while len(self._partial) > self.max_pending:
            self._forget(min(self._partial))
            self._counters.dropped_full += 1
        return None

    def expire(self, now_ns: int) -> int:
        """Drop incomplete stamps whose first part is older than the timeout; return count."""
        expired = 0
        while self._arrival_order:
            stamp_ns, arrival_ns = self._arrival_order[0]
            # Entries of completed or dropped stamps are stale: skip them.
            pending = self._first_arrival.get(stamp_ns) == arrival_ns
            if pending and now_ns - arrival_ns <= self.timeout_ns:
                break
            self._arrival_order.popleft()
            if pending:
                self._forget(stamp_ns)
                expired += 1
        self._counters.expired += expired
        return expired

    def reset(self) -> int:
        """Drop every incomplete stamp; return how many were dropped."""
        dropped = len(self._partial)
        self._partial.clear()
        self._first_arrival.clear()
        self._arrival_order.clear()
        return dropped

    def _forget(self, stamp_ns: int) -> None:
        """Remove a stamp's parts (its arrival-order entry is skipped lazily)."""
        del self._partial[stamp_ns]
        del self._first_arrival[stamp_ns]
