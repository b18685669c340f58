import warnings

import numpy as np
import pytest
import torch

from onlineanyseg_ros.core.geometry import as_tensor, backproject, camera_center
from onlineanyseg_ros.core.profiling import HostSyncCounter

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.mark.parametrize('device', DEVICES)
def test_as_tensor_converts_host_arrays_and_tensors(device):
    device = torch.device(device)
    read_only = np.arange(6, dtype=np.uint16).reshape(2, 3)
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # torch warns about tensors over read-only arrays
        result = as_tensor(read_only, device, torch.int64)
    assert result.dtype == torch.int64 and result.device.type == device.type
    assert result.cpu().tolist() == [[0, 1, 2], [3, 4, 5]]
    assert as_tensor([1.5, 2.5], device, torch.float64).cpu().tolist() == [1.5, 2.5]
    tensor = torch.ones(3, device=device)
    assert as_tensor(tensor, device, torch.float32) is tensor


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_uploads_and_backprojection_do_not_block_the_host():
    device = torch.device('cuda')
    depth = np.full((48, 64), 2.0, dtype=np.float32)
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, 3] = [1.0, 2.0, 3.0]
    counter = HostSyncCounter(device)
    as_tensor(depth, device, torch.float64)  # first use: CUDA and pinned-memory set-up
    torch.cuda.synchronize(device)
    with counter.counting():
        points, valid = backproject(depth, K, pose, 0.1, 10.0, device)
        center = camera_center(pose, device)
        labels = as_tensor(np.ones((48, 64), dtype=np.uint16), device, torch.int64)
    assert counter.count == 0
    assert bool(valid.all()) and labels.sum().item() == 48 * 64
    assert center.tolist() == [1.0, 2.0, 3.0]
    # The centre pixel lies on the optical axis, 2 m ahead of the camera.
    assert points[24, 32].tolist() == pytest.approx([1.0, 2.0, 5.0])
