"""CUDA graph capture for the mapping hot paths, without ``torch.cuda.graph``'s flush.

``torch.cuda.graph`` synchronizes the device and empties the caching allocator before
every capture (older torch also runs ``gc.collect()``). That suits a capture made once at
start-up; this package captures mid-stream, whenever a live map meets a new input shape
(voxel-hash inserts, lifting capacities, image sizes), and an emptied cache sends the
following allocations back to ``cudaMalloc``. ``capture`` records on a side stream that
first waits for the current stream's queued work, and keeps the cache.
"""

import contextlib
from typing import Iterator, Union

import torch


@contextlib.contextmanager
def capture(graph: torch.cuda.CUDAGraph,
            device: Union[str, torch.device]) -> Iterator[torch.cuda.Stream]:
    """Capture the CUDA work queued in the body into ``graph`` (nothing runs).

    The body runs on a side stream (yielded) that waits for ``device``'s current stream;
    afterwards the current stream waits for the side stream. The graph's memory comes
    from a private pool of its own, as with ``torch.cuda.graph``.
    """
    current = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        graph.capture_begin()
        try:
            yield stream
        finally:
            graph.capture_end()
    current.wait_stream(stream)
