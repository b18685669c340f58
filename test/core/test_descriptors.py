"""FPFH-style point descriptors: neighbours, invariance, discrimination, factory."""

import math

import pytest
import torch

from onlineanyseg_ros.core.config import SegmenterConfig
from onlineanyseg_ros.core.descriptors import (
    FpfhDescriptor, make_descriptor, pair_features, radius_pairs)


def _plane(count=24, spacing=0.015):
    grid = torch.arange(count) * spacing
    x, y = torch.meshgrid(grid, grid, indexing='ij')
    points = torch.stack([x.flatten(), y.flatten(), torch.zeros(count * count)], dim=1)
    return points, torch.tensor([0.0, 0.0, 1.0]).expand_as(points).clone()


def _sphere(count=1000, radius=0.15, center=(1.0, 0.0, 0.0)):
    index = torch.arange(count) + 0.5
    polar = torch.acos(1 - 2 * index / count)
    azimuth = math.pi * (1 + 5 ** 0.5) * index
    normals = torch.stack([torch.cos(azimuth) * torch.sin(polar),
                           torch.sin(azimuth) * torch.sin(polar), torch.cos(polar)], dim=1)
    return normals * radius + torch.tensor(center), normals


def _scene():
    plane, plane_normals = _plane()
    sphere, sphere_normals = _sphere()
    return (torch.cat([plane, sphere]), torch.cat([plane_normals, sphere_normals]),
            plane.shape[0])


def test_radius_pairs_match_brute_force():
    generator = torch.Generator().manual_seed(0)
    points = torch.rand((300, 3), generator=generator) * 0.4 - 0.2
    pairs = set()
    for src, dst in radius_pairs(points, 0.07, chunk_points=64):
        pairs |= set(zip(src.tolist(), dst.tolist()))
    distance = torch.cdist(points, points)
    close = (distance < 0.07) & ~torch.eye(300, dtype=torch.bool)
    assert pairs == set(map(tuple, torch.nonzero(close).tolist()))


def test_pair_features_of_a_plane_are_zero():
    points, normals = _plane(4)
    src, dst = torch.tensor([0, 1, 5]), torch.tensor([3, 12, 10])
    theta, alpha, phi = pair_features(points, normals, src, dst)
    for values in (theta, alpha, phi):
        assert torch.allclose(values, torch.zeros(3), atol=1e-6)


def test_fpfh_is_rotation_and_translation_invariant():
    points, normals, _ = _scene()
    descriptor = FpfhDescriptor()
    features = descriptor.point_features(points, normals)
    assert features.shape == (points.shape[0], 33)
    rotation, _ = torch.linalg.qr(torch.randn((3, 3), generator=torch.Generator()
                                              .manual_seed(3), dtype=torch.float64))
    rotation = (rotation * torch.sign(torch.linalg.det(rotation))).to(torch.float32)
    moved = descriptor.point_features(points @ rotation.T + torch.tensor([0.3, -2.0, 5.0]),
                                      normals @ rotation.T)
    cosine = (features * moved).sum(1)
    assert cosine.mean() > 0.999 and cosine.min() > 0.95


def test_fpfh_separates_plane_and_sphere():
    points, normals, plane_count = _scene()
    features = FpfhDescriptor().point_features(points, normals)
    assert torch.allclose(features.norm(dim=1), torch.ones(points.shape[0]))
    plane = torch.nn.functional.normalize(features[:plane_count].mean(0), dim=0)
    sphere = torch.nn.functional.normalize(features[plane_count:].mean(0), dim=0)
    assert float(plane @ sphere) < 0.8
    # Points agree with their own surface type far more than with the other one.
    assert float((features[:plane_count] @ plane).mean()) > 0.95
    assert float((features[plane_count:] @ sphere).mean()) > 0.95


def test_isolated_point_gets_zero_row():
    points = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.01, 0.0, 0.0]])
    normals = torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3)
    features = FpfhDescriptor().point_features(points, normals)
    assert torch.equal(features[0], torch.zeros(33))
    assert torch.isclose(features[1].norm(), torch.tensor(1.0))


def test_make_descriptor():
    assert make_descriptor(SegmenterConfig(descriptor='none')) is None
    assert make_descriptor(SegmenterConfig()) is None  # the CPU default
    assert isinstance(make_descriptor(SegmenterConfig(descriptor='fpfh')), FpfhDescriptor)
    with pytest.raises((ImportError, FileNotFoundError), match='fcgf'):
        make_descriptor(SegmenterConfig(descriptor='fcgf'))
