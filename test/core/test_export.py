"""Export single linkage: the lattice approximation against the exact radius version."""

import pytest
import torch

from onlineanyseg_ros.core.export import (largest_linked_component,
                                          largest_linked_component_exact)

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def _patch(origin, size_m, spacing_m=0.025):
    """Return float32 points of a square patch on the z = origin[2] plane."""
    steps = torch.arange(0.0, size_m, spacing_m)
    grid = torch.stack(torch.meshgrid(steps, steps, indexing='ij'), -1).reshape(-1, 2)
    return torch.cat([grid, torch.zeros(len(grid), 1)], 1) + torch.tensor(origin)


@pytest.mark.parametrize('device', DEVICES)
def test_lattice_matches_exact_on_separated_clusters(device):
    generator = torch.Generator().manual_seed(0)
    # Instance 0: a big patch and a small patch 0.5 m away; instance 1: two patches where
    # the second is bigger; instance 2 overlaps instance 0 in space but must stay apart.
    parts = [(_patch((0, 0, 0), 0.5), 0), (_patch((1.0, 0, 0), 0.2), 0),
             (_patch((0, 2, 0), 0.2), 1), (_patch((0, 3, 0.3), 0.4), 1),
             (_patch((0.1, 0.1, 0.02), 0.3), 2)]
    points = torch.cat([p for p, _ in parts])
    points = points + 0.003 * torch.randn(points.shape, generator=generator)
    instance = torch.cat([torch.full((len(p),), i) for p, i in parts])
    points, instance = points.to(device), instance.to(device)
    exact = largest_linked_component_exact(points, instance, 0.1)
    lattice = largest_linked_component(points, instance, 0.1)
    assert torch.equal(exact, lattice)
    sizes = [len(p) for p, _ in parts]
    expected = torch.cat([torch.full((n,), keep) for n, keep in
                          zip(sizes, [True, False, False, True, True])]).to(device)
    assert torch.equal(lattice, expected)


def test_lattice_links_a_gap_below_half_radius_and_splits_one_beyond_two_radii():
    line = torch.stack([torch.arange(0.0, 1.0, 0.025), torch.zeros(40), torch.zeros(40)], 1)
    near = torch.cat([line, line[:10] + torch.tensor([1.0 + 0.04, 0, 0])])
    far = torch.cat([line, line[:10] + torch.tensor([1.0 + 0.2, 0, 0])])
    instance = torch.zeros(50, dtype=torch.int64)
    assert bool(largest_linked_component(near, instance, 0.1).all())
    kept = largest_linked_component(far, instance, 0.1)
    assert bool(kept[:40].all()) and not bool(kept[40:].any())
