"""Fixtures of the core tests."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostReads(TorchDispatchMode):
    """Record what reads device data on the host inside a ``with`` block.

    On the CPU nothing syncs, so the tests count what would: operators whose output size or
    result the host must read, and ``Tensor.tolist`` calls (through the ``host_reads``
    fixture). ``seen`` lists their names in call order.
    """

    NAMES = ('nonzero', 'unique', '_unique2', 'unique_consecutive', 'unique_dim',
             'masked_select', '_local_scalar_dense', 'is_nonzero', 'equal', 'bincount',
             'repeat_interleave', 'item')

    def __init__(self, active: list):
        super().__init__()
        self.seen = []
        self._active = active

    @property
    def count(self) -> int:
        """Number of host reads seen."""
        return len(self.seen)

    def __enter__(self):
        """Start recording (``tolist`` calls too)."""
        self._active.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        """Stop recording."""
        self._active.remove(self)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Run ``func``, noting it when it reads device data on the host."""
        name = func.__name__.split('.')[0]
        if name in self.NAMES:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_reads(monkeypatch):
    """Return a factory of ``HostReads`` recorders; ``tolist`` calls in their blocks count."""
    active = []
    tolist = torch.Tensor.tolist

    def counted_tolist(tensor):
        for recorder in active:
            recorder.seen.append('tolist')
        return tolist(tensor)

    monkeypatch.setattr(torch.Tensor, 'tolist', counted_tolist)
    return lambda: HostReads(active)
