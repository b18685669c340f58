"""Device-synchronized timing scopes for per-stage latency reports; a host-sync counter."""

from collections import defaultdict, deque
import contextlib
import time
from typing import Callable, Deque, Dict, Iterable, Iterator, Tuple
import warnings

import numpy as np
import torch


def latency_summary(samples_ms: Iterable[float]) -> Dict[str, float]:
    """Return ``{count, p50_ms, p95_ms, mean_ms, total_ms}`` of non-empty milliseconds."""
    values = np.fromiter(samples_ms, dtype=np.float64)
    return {
        'count': int(values.size),
        'p50_ms': float(np.percentile(values, 50)),
        'p95_ms': float(np.percentile(values, 95)),
        'mean_ms': float(values.mean()),
        'total_ms': float(values.sum()),
    }


class StageTimer:
    """Collect durations per named stage, in milliseconds.

    On the CPU a stage's duration is its wall-clock time. On CUDA, with ``synchronize``,
    each scope synchronizes the device at entry and exit, so a stage's number is its own
    GPU time with nothing overlapping it (benchmarks). Without it, the scope records a
    CUDA event at entry and exit instead, and never blocks: a stage's number is the GPU
    time between its events, and it is read when ``summary()`` is asked for (which waits
    for the recorded work), or earlier once the events have completed.
    """

    def __init__(self, device: torch.device, synchronize: bool = True, history: int = 1000):
        cuda = torch.device(device).type == 'cuda'
        self._sync = synchronize and cuda
        self._events = not synchronize and cuda
        self._device = torch.device(device)
        self._samples: Dict[str, Deque[float]] = defaultdict(lambda: deque(maxlen=history))
        # (stage, start event, end event) not yet read, oldest first.
        self._pending: Deque[Tuple[str, torch.cuda.Event, torch.cuda.Event]] = deque()

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Time the body of a ``with`` block under ``name``."""
        if self._events:
            stream = torch.cuda.current_stream(self._device)
            start = torch.cuda.Event(enable_timing=True)
            start.record(stream)
            try:
                yield
            finally:
                end = torch.cuda.Event(enable_timing=True)
                end.record(stream)
                self._pending.append((name, start, end))
                self._collect(wait=False)
            return
        if self._sync:
            torch.cuda.synchronize(self._device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize(self._device)
            self._samples[name].append((time.perf_counter() - start) * 1e3)

    def _collect(self, wait: bool) -> None:
        """Read the pending event pairs in order: all of them (``wait``) or the completed."""
        while self._pending:
            name, start, end = self._pending[0]
            if wait:
                end.synchronize()
            elif not end.query():
                return
            self._pending.popleft()
            self._samples[name].append(start.elapsed_time(end))

    def summary(self) -> Dict[str, Dict[str, float]]:
        """Return ``{stage: {count, p50_ms, p95_ms, mean_ms, total_ms}}`` over the history."""
        self._collect(wait=True)
        return {name: latency_summary(samples) for name, samples in self._samples.items()}

    def reset(self) -> None:
        """Forget every sample."""
        self._collect(wait=True)
        self._samples.clear()


# What torch.cuda.set_sync_debug_mode('warn') says at every host sync.
_SYNC_WARNING = 'called a synchronizing CUDA operation'


class HostSyncCounter:
    """Count CUDA host syncs inside ``counting()`` blocks (nothing to count on the CPU).

    Every sync in a block emits a warning (``torch.cuda.set_sync_debug_mode('warn')``), which
    slows the block: time the counted calls apart from the timed ones.
    """

    def __init__(self, device: torch.device) -> None:
        self.enabled = device.type == 'cuda'
        self.count = 0

    @contextlib.contextmanager
    def counting(self):
        """Add the host syncs of the block to ``count`` (``torch.cuda.set_sync_debug_mode``)."""
        if not self.enabled:
            yield
            return
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter('always')
            torch.cuda.set_sync_debug_mode('warn')
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode('default')
        # Only the per-sync warning: the mode's one-time "prototype feature" notice also
        # speaks of synchronizing operations.
        self.count += sum(str(record.message).startswith(_SYNC_WARNING) for record in records)


def median_seconds(function: Callable[[], object], device: torch.device, warmup: int = 1,
                   repeats: int = 10) -> float:
    """Return the median wall-clock seconds of ``function()`` after ``warmup`` calls.

    On CUDA the device is synchronized around every call, so the time is the GPU's.
    """
    device = torch.device(device)

    def synchronize() -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        function()
        synchronize()
        samples.append(time.perf_counter() - started)
    return float(np.median(samples))
