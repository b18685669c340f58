import time

import pytest
import torch

from onlineanyseg_ros.core.profiling import HostSyncCounter, latency_summary, StageTimer


def test_latency_summary_percentiles():
    summary = latency_summary([4.0, 1.0, 3.0, 2.0])
    assert summary['count'] == 4
    assert summary['p50_ms'] == 2.5
    assert summary['total_ms'] == 10.0
    assert summary['p95_ms'] == pytest.approx(3.85)


def test_cpu_scopes_record_wall_clock_per_stage_and_keep_a_bounded_history():
    timer = StageTimer(torch.device('cpu'), history=3)
    for _ in range(5):
        with timer.scope('sleep'):
            time.sleep(0.01)
    with pytest.raises(RuntimeError):
        with timer.scope('failed'):
            raise RuntimeError('the stage failed')
    summary = timer.summary()
    assert summary['sleep']['count'] == 3
    assert 10.0 <= summary['sleep']['p50_ms'] < 200.0
    # A stage that raised still counts its time.
    assert summary['failed']['count'] == 1
    timer.reset()
    assert timer.summary() == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_event_scopes_time_gpu_work_without_host_syncs():
    device = torch.device('cuda')
    timer = StageTimer(device, synchronize=False)
    counter = HostSyncCounter(device)
    data = torch.rand(4096, 4096, device=device)
    torch.cuda.synchronize(device)
    with counter.counting():
        for _ in range(3):
            with timer.scope('matmul'):
                for _ in range(10):
                    data = data @ data
                    data = data / data.norm()
            with timer.scope('nothing'):
                pass
    assert counter.count == 0
    summary = timer.summary()
    assert summary['matmul']['count'] == 3 and summary['nothing']['count'] == 3
    # Ten 4096^3 products take milliseconds on any GPU; an empty stage takes microseconds.
    assert summary['matmul']['p50_ms'] > 10 * summary['nothing']['p50_ms']


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_host_sync_counter_counts_each_sync_and_nothing_else():
    device = torch.device('cuda')
    counter = HostSyncCounter(device)
    values = torch.arange(10, device=device)
    with counter.counting():  # the first block also meets the mode's one-time notice
        values.sum().item()
    with counter.counting():
        values.tolist()
        torch.nonzero(values)
        (values * 2).sum()  # stays on the device
    assert counter.count == 3


def test_host_sync_counter_is_off_on_the_cpu():
    counter = HostSyncCounter(torch.device('cpu'))
    with counter.counting():
        torch.arange(3).sum().item()
    assert not counter.enabled and counter.count == 0
