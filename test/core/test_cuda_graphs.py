"""cuda_graphs.capture: records without running, replays, keeps the allocator's cache."""

import pytest
import torch

from onlineanyseg_ros.core.cuda_graphs import capture

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def test_capture_records_without_running_and_replays_after_queued_work():
    device = torch.device('cuda')
    source = torch.arange(1 << 20, dtype=torch.float64, device=device)
    target = torch.zeros_like(source)
    graph = torch.cuda.CUDAGraph()
    source.mul_(2)  # queued on the current stream before the capture
    with capture(graph, device) as stream:
        assert torch.cuda.current_stream(device) == stream
        target.copy_(source * 3 + 1)
    assert torch.cuda.current_stream(device) != stream
    assert int(target.abs().sum()) == 0  # captured, not run
    graph.replay()
    expected = torch.arange(1 << 20, dtype=torch.float64, device=device) * 6 + 1
    assert torch.equal(target, expected)
    source.fill_(1)
    graph.replay()
    assert bool((target == 4).all())


def test_capture_keeps_the_cached_blocks_of_the_allocator():
    device = torch.device('cuda')
    block = torch.empty(64 << 20, dtype=torch.uint8, device=device)
    del block  # 64 MiB back in the cache, not to the driver
    reserved = torch.cuda.memory_reserved(device)
    value = torch.ones(8, device=device)
    graph = torch.cuda.CUDAGraph()
    with capture(graph, device):
        value.add_(1)
    # torch.cuda.graph would have emptied the cache (and synchronized) before capturing.
    assert torch.cuda.memory_reserved(device) >= reserved
    graph.replay()
    assert value.tolist() == [2.0] * 8
