import warnings

import numpy as np
import pytest
import torch

from onlineanyseg_ros.core import geometry
from onlineanyseg_ros.core.geometry import as_tensor, backproject, Backprojector, camera_center
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


def _random_frame(rng, height, width, dtype=np.float32):
    """Depth with zeros, NaNs and far pixels, intrinsics and a random rigid pose."""
    depth = rng.uniform(0.0, 6.0, (height, width)).astype(dtype)
    depth[rng.random((height, width)) < 0.1] = 0.0
    depth[rng.random((height, width)) < 0.05] = np.nan
    K = np.array([[rng.uniform(40, 60), 0, width / 2], [0, rng.uniform(40, 60), height / 2],
                  [0, 0, 1]])
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    pose = np.eye(4)
    pose[:3, :3] = rotation * np.sign(np.linalg.det(rotation))
    pose[:3, 3] = rng.uniform(-50, 50, 3)
    return depth, K, pose


@pytest.mark.parametrize('device', DEVICES)
def test_backprojector_replays_backproject_exactly_per_image_size(device):
    rng = np.random.default_rng(3)
    backprojector = Backprojector(0.1, 5.0, device, use_graphs=True)
    frames = [_random_frame(rng, 24, 32) for _ in range(4)]
    frames += [_random_frame(rng, 12, 20), _random_frame(rng, 24, 32, np.float64)]
    frames += [_random_frame(rng, 12, 20) for _ in range(2)]
    outputs = [backprojector(*frame) for frame in frames]
    # Every frame's outputs are its own: later replays do not overwrite earlier ones.
    for (depth, K, pose), (points, valid) in zip(frames, outputs):
        expected_points, expected_valid = backproject(depth, K, pose, 0.1, 5.0, device)
        assert points.dtype == torch.float32 and points.device.type == device
        assert torch.equal(valid, expected_valid)
        assert torch.equal(points, expected_points)
    # Per image size (shape and depth dtype) the first frame runs eagerly and the second
    # captures: 4 and 3 frames of two sizes replay 3 and 2 times, a float64 depth none.
    assert backprojector.stats == {'replays': 5, 'captures': 2}


def test_backprojector_without_graphs_or_after_a_failed_capture_calls_backproject(
        monkeypatch):
    rng = np.random.default_rng(4)
    frames = [_random_frame(rng, 16, 16) for _ in range(3)]

    def failing_capture(self, backprojector, depth):
        raise RuntimeError('operation not permitted when stream is capturing')

    monkeypatch.setattr(geometry._BackprojectGraph, '__init__', failing_capture)
    backprojector = Backprojector(0.1, 5.0, 'cpu', use_graphs=True)
    with pytest.warns(UserWarning, match='capture failed'):
        outputs = [backprojector(*frame) for frame in frames]
    assert not backprojector.use_graphs and backprojector.stats['replays'] == 0
    for (depth, K, pose), (points, valid) in zip(frames, outputs):
        expected_points, expected_valid = backproject(depth, K, pose, 0.1, 5.0)
        assert torch.equal(points, expected_points) and torch.equal(valid, expected_valid)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_backprojector_replays_without_blocking_the_host():
    device = torch.device('cuda')
    rng = np.random.default_rng(5)
    backprojector = Backprojector(0.1, 5.0, device)
    for _ in range(2):  # eager warm-up, then the capture
        backprojector(*_random_frame(rng, 48, 64))
    torch.cuda.synchronize(device)
    counter = HostSyncCounter(device)
    frame = _random_frame(rng, 48, 64)
    with counter.counting():
        points, valid = backprojector(*frame)
    assert counter.count == 0 and backprojector.stats == {'replays': 2, 'captures': 1}
    expected_points, expected_valid = backproject(*frame, 0.1, 5.0, device)
    assert torch.equal(points, expected_points) and torch.equal(valid, expected_valid)
