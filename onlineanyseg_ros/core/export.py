"""Export of the instance map: surface points labeled by valid merged masks (method.md 4.9).

Deliberate deviations from the reference export, kept in docs/method.md:
- each surface point belongs to at most one instance, the smallest covering it (the reference
  applies this rule only to its visual export and returns overlapping masks);
- features are aligned with instances (the reference misaligns them after sorting);
- every instance carries a real confidence from the mask graph instead of 1.0.
"""

from dataclasses import dataclass
import os
import pathlib
from typing import Dict, List, Optional

import numpy as np
import torch

from onlineanyseg_ros.core.config import SegmenterConfig
from onlineanyseg_ros.core.graph_ops import connected_components, radius_pairs

BACKGROUND_GREY = 200


def instance_palette(uids: np.ndarray) -> np.ndarray:
    """Deterministic distinct-ish uint8 ``(I, 3)`` colours from stable instance ids."""
    golden = 0.618033988749895
    hue = (np.asarray(uids, dtype=np.float64) * golden) % 1.0
    sector = np.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    value, saturation = 0.95, 0.75
    v = np.full_like(hue, value)
    p = np.full_like(hue, value * (1 - saturation))
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    table = np.stack([np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
                      np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1)])
    rgb = table[sector.astype(np.int64) % 6, np.arange(hue.size)]
    return np.round(rgb * 255).astype(np.uint8).reshape(-1, 3)


@dataclass(frozen=True)
class ExportedMap:
    """The exported map, on the host.

    Attributes:
        points: float32 ``(N, 3)`` surface points, world frame, metres.
        colors: uint8 ``(N, 3)`` observed RGB colours.
        instance_ids: int32 ``(N,)``, 0 = no instance, i = instance i (1..I).
        scores: float32 ``(I,)`` confidence of instance i at index i-1.
        uids: int64 ``(I,)`` stable instance ids (survive merges and renumbering).
        features: float32 ``(I, D)`` unit semantic features, or None without features.

    """

    points: np.ndarray
    colors: np.ndarray
    instance_ids: np.ndarray
    scores: np.ndarray
    uids: np.ndarray
    features: Optional[np.ndarray] = None

    @property
    def num_instances(self) -> int:
        """Number of exported instances I."""
        return int(self.scores.size)

    def instance_colors(self) -> np.ndarray:
        """uint8 ``(N, 3)`` colours by instance, grey for unlabeled points."""
        colors = np.full_like(self.colors, BACKGROUND_GREY)
        labeled = self.instance_ids > 0
        colors[labeled] = instance_palette(self.uids)[self.instance_ids[labeled] - 1]
        return colors

    def instance_table(self) -> List[dict]:
        """Per instance: id, uid, score, point count, box centre and size (metres)."""
        table = []
        for index in range(self.num_instances):
            members = self.points[self.instance_ids == index + 1]
            low, high = members.min(0), members.max(0)
            table.append({'id': index + 1, 'uid': int(self.uids[index]),
                          'score': float(self.scores[index]), 'points': int(len(members)),
                          'center': ((low + high) / 2).tolist(), 'size': (high - low).tolist()})
        return table

    def save(self, directory: pathlib.Path, summary: Optional[dict] = None) -> Dict[str, str]:
        """Write instances.ply, instances.npz and summary.json atomically; return the paths."""
        from onlineanyseg_ros.data.io import atomic_write, write_json, write_ply
        directory = pathlib.Path(directory)
        paths = {'ply': directory / 'instances.ply', 'npz': directory / 'instances.npz',
                 'summary': directory / 'summary.json'}
        write_ply(paths['ply'], self.points, self.instance_colors(),
                  {'instance_id': self.instance_ids.astype(np.int32)})
        arrays = {'points': self.points, 'colors': self.colors,
                  'instance_ids': self.instance_ids, 'scores': self.scores, 'uids': self.uids}
        if self.features is not None:
            arrays['features'] = self.features
        with atomic_write(paths['npz']) as handle:
            np.savez_compressed(handle, **arrays)
        document = dict(summary or {})
        document['instances'] = self.instance_table()
        write_json(paths['summary'], document)
        return {name: os.fspath(path) for name, path in paths.items()}


def _smallest_cover(point_index: torch.Tensor, instance: torch.Tensor,
                    instance_size: torch.Tensor) -> torch.Tensor:
    """Keep, per point, the (point, instance) pair of the smallest instance: a bool mask."""
    order = torch.argsort(instance_size[instance], stable=True)
    order = order[torch.argsort(point_index[order], stable=True)]
    first = torch.ones_like(order, dtype=torch.bool)
    first[1:] = point_index[order][1:] != point_index[order][:-1]
    keep = torch.zeros_like(first)
    keep[order[first]] = True
    return keep


def _largest_linked_component(points: torch.Tensor, instance: torch.Tensor,
                              radius: float) -> torch.Tensor:
    """Bool mask of the points in the largest ``radius`` single-linkage component per instance."""
    i, j = radius_pairs(points, instance, radius)
    component = connected_components(points.shape[0], i, j)
    sizes = torch.bincount(component, minlength=points.shape[0])
    num_instances = int(instance.max()) + 1
    # Largest component per instance; ties go to the smallest component label.
    best = torch.full((num_instances,), -1, dtype=torch.int64, device=points.device)
    score = sizes[component] * (points.shape[0] + 1) + (points.shape[0] - component)
    best.scatter_reduce_(0, instance, score, reduce='amax')
    return score == best[instance]


def export_instances(surface, graph, config: SegmenterConfig) -> ExportedMap:
    """Label ``surface`` points with the valid merged masks of ``graph`` (method.md 4.9)."""
    device = surface.points.device
    num_merged = int(graph.num_merged)
    point_index, merged = graph.membership(surface.slots)
    if num_merged:
        keep = graph.valid[merged]
        point_index, merged = point_index[keep], merged[keep]
    counts = torch.bincount(merged, minlength=num_merged)
    keep = counts[merged] >= config.export_min_points
    point_index, merged = point_index[keep], merged[keep]
    keep = _smallest_cover(point_index, merged, counts)
    point_index, merged = point_index[keep], merged[keep]
    if point_index.numel() and config.export_cluster_radius_m > 0:
        keep = _largest_linked_component(surface.points[point_index], merged,
                                         config.export_cluster_radius_m)
        point_index, merged = point_index[keep], merged[keep]
    counts = torch.bincount(merged, minlength=num_merged)
    survivors = torch.nonzero(counts > config.export_min_points_final).flatten()
    keep = counts[merged] > config.export_min_points_final
    point_index, merged = point_index[keep], merged[keep]
    # Instances numbered 1..I by decreasing confidence.
    confidence = graph.confidence[survivors] if num_merged else torch.zeros(0, device=device)
    survivors = survivors[torch.argsort(confidence, descending=True, stable=True)]
    new_id = torch.zeros(num_merged, dtype=torch.int64, device=device)
    new_id[survivors] = torch.arange(1, survivors.numel() + 1, device=device)
    instance_ids = torch.zeros(surface.points.shape[0], dtype=torch.int32, device=device)
    instance_ids[point_index] = new_id[merged].to(torch.int32)
    features = None
    if graph.features is not None and survivors.numel():
        features = torch.nn.functional.normalize(graph.features[survivors].float(), dim=1,
                                                 eps=1e-7).cpu().numpy()
    return ExportedMap(
        points=surface.points.cpu().numpy().astype(np.float32),
        colors=surface.colors.cpu().numpy().astype(np.uint8),
        instance_ids=instance_ids.cpu().numpy(),
        scores=graph.confidence[survivors].float().cpu().numpy() if survivors.numel()
        else np.zeros(0, np.float32),
        uids=graph.stable_ids()[survivors].cpu().numpy() if survivors.numel()
        else np.zeros(0, np.int64),
        features=features)
