"""Device-synchronized timing scopes for per-stage latency reports; a host-sync counter."""

from collections import defaultdict, deque
import contextlib
import time
from typing import Callable, Deque, Dict, Iterable, Iterator
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
    """Collect wall-clock durations per named stage, in milliseconds.

    On CUDA each scope synchronizes the device at entry and exit when ``synchronize`` is set,
    so a stage's number is its own GPU time rather than the launch time; leave it off in
    production paths that must not block (the numbers then measure host time only).
    """

    def __init__(self, device: torch.device, synchronize: bool = True, history: int = 1000):
        self._sync = synchronize and torch.device(device).type == 'cuda'
        self._device = torch.device(device)
        self._samples: Dict[str, Deque[float]] = defaultdict(lambda: deque(maxlen=history))
        self.last_ms: Dict[str, float] = {}

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Time the body of a ``with`` block under ``name``."""
        if self._sync:
            torch.cuda.synchronize(self._device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize(self._device)
            elapsed_ms = (time.perf_counter() - start) * 1e3
            self._samples[name].append(elapsed_ms)
            self.last_ms[name] = elapsed_ms

    def summary(self) -> Dict[str, Dict[str, float]]:
        """Return ``{stage: {count, p50_ms, p95_ms, mean_ms, total_ms}}`` over the history."""
        return {name: latency_summary(samples) for name, samples in self._samples.items()}

    def reset(self) -> None:
        """Forget every sample."""
        self._samples.clear()
        self.last_ms.clear()


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
        self.count += sum('synchroniz' in str(record.message) for record in records)


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
