"""ScanNet-scale latency and memory of the mask graph, with a reference-pattern baseline.

Pure slot-space synthetic stream (no rendering, no lifting): a world of objects that each own
a contiguous range of voxel slots, a "camera" that sweeps through them so the map grows,
and per keyframe ~50 masks (random 70-100 % subsets of the visible objects, sometimes split
in two or merged with a neighbour) with CLIP-like features (object prototype + noise).
``MaskGraph`` gets every keyframe (merge round every ``merge_every_n_keyframes``); the first
``--baseline-keyframes`` are also run through the reference's access pattern (method.md
3.5-3.6: dict of Python sets voxel -> raw ids, raw -> merged list mirrored from the graph,
a Python walk per new mask, a dense observation matrix product for visibility) and the
containment entries of both are compared.

    PYTHONPATH=. python benchmarks/bench_scale.py --device cuda --json bench_scale.json
"""

import argparse
import json
import os
import time

import numpy as np
import torch

from onlineanyseg_ros.core.config import SegmenterConfig
from onlineanyseg_ros.core.mask_graph import MaskGraph

_KEY_SHIFT = 40


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    parser.add_argument('--keyframes', type=int, default=1500, help='keyframes to insert')
    parser.add_argument('--objects', type=int, default=3000, help='objects in the world')
    parser.add_argument('--window', type=int, default=50, help='objects near the camera')
    parser.add_argument('--min-slots', type=int, default=300, help='smallest object (slots)')
    parser.add_argument('--max-slots', type=int, default=3000, help='largest object (slots)')
    parser.add_argument('--feature-dim', type=int, default=1024, help='CLIP-like feature size')
    parser.add_argument('--feature-noise', type=float, default=0.3,
                        help='norm of the feature noise relative to the unit prototype')
    parser.add_argument('--baseline-keyframes', type=int, default=200,
                        help='keyframes also run through the reference pattern (0 = none)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', default='bench_scale.json', help='output JSON path')
    return parser.parse_args(argv)


class SyntheticWorld:
    """Objects over contiguous slot ranges and a camera sweeping through them."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Draw object sizes (slots) and unit float32 ``(N, D)`` prototypes from the seed."""
        rng = np.random.default_rng(args.seed)
        self.args = args
        self.sizes = rng.integers(args.min_slots, args.max_slots + 1, args.objects)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.num_slots = int(self.sizes.sum())
        prototypes = rng.standard_normal((args.objects, args.feature_dim)).astype(np.float32)
        self.prototypes = prototypes / np.linalg.norm(prototypes, axis=1, keepdims=True)

    def visible_objects(self, frame: int, rng: np.random.Generator) -> np.ndarray:
        """Return the sorted ids of the objects seen in keyframe ``frame`` (85 % of a window)."""
        args = self.args
        window = min(args.window, args.objects)
        first = round(frame * (args.objects - window) / max(args.keyframes - 1, 1))
        objects = np.arange(first, first + window)
        return objects[rng.random(window) < 0.85]

    def keyframe(self, frame: int) -> dict:
        """Return one keyframe as numpy arrays (slots int64, features float32 unit rows).

        Keys: ``observed_slots`` (full ranges of the visible objects), ``mask_slots`` and
        ``mask_offsets`` (packed masks, pairwise disjoint), ``features`` ``(k, D)``,
        ``scores`` ``(k,)`` in ``[0.6, 1]``.
        """
        rng = np.random.default_rng((self.args.seed, frame))
        visible = self.visible_objects(frame, rng)
        masks, owners = [], []
        index = 0
        while index < visible.size:
            obj = visible[index]
            slots = self._subset(obj, rng)
            neighbour = index + 1 < visible.size and visible[index + 1] == obj + 1
            if neighbour and rng.random() < 0.05:
                masks.append(np.concatenate([slots, self._subset(obj + 1, rng)]))
                owners.append([obj, obj + 1])
                index += 1
            elif rng.random() < 0.1 and slots.size >= 2:
                half = slots.size // 2
                masks += [slots[:half], slots[half:]]
                owners += [[obj], [obj]]
            else:
                masks.append(slots)
                owners.append([obj])
            index += 1
        observed = [np.arange(self.starts[o], self.starts[o] + self.sizes[o]) for o in visible]
        return {'observed_slots': np.concatenate(observed + [np.zeros(0, np.int64)]),
                'mask_slots': np.concatenate(masks + [np.zeros(0, np.int64)]),
                'mask_offsets': np.concatenate([[0], np.cumsum([m.size for m in masks])]),
                'features': self._features(owners, rng),
                'scores': rng.uniform(0.6, 1.0, len(masks)).astype(np.float32)}

    def _subset(self, obj: int, rng: np.random.Generator) -> np.ndarray:
        """Return a random 70-100 % subset of the object's slots, int64 ascending."""
        keep = rng.random(self.sizes[obj]) < rng.uniform(0.7, 1.0)
        return (self.starts[obj] + np.flatnonzero(keep)).astype(np.int64)

    def _features(self, owners, rng: np.random.Generator) -> np.ndarray:
        """Return float32 ``(k, D)`` unit rows: summed owner prototypes plus noise."""
        dim = self.args.feature_dim
        if not owners:
            return np.zeros((0, dim), np.float32)
        rows = np.stack([self.prototypes[o].sum(0) for o in owners])
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        rows += rng.standard_normal(rows.shape) * (self.args.feature_noise / dim ** 0.5)
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


class ReferencePattern:
    """The reference's insertion access pattern (method.md 3.5-3.6) on host containers.

    Optimistic for the reference: removed raw ids are filtered with a set test, not the
    list-membership path (method.md H1/H2), and ``Obs`` is a uint8 numpy matrix.
    """

    def __init__(self, config: SegmenterConfig, num_frames: int) -> None:
        """Create empty containers for ``num_frames`` seg frames."""
        self.config = config
        self.voxel_hash = {}  # slot -> set of raw ids
        self.raw_voxels = []
        self.raw_frame = []
        self.merged_of_raw = []
        self.merged_voxels = []  # int64 slot arrays per merged id
        self.obs = np.zeros((0, num_frames), np.uint8)
        self.frames = np.zeros((0, num_frames), np.float32)  # H: merged id x seg frame

    def sync(self, graph: MaskGraph) -> None:
        """Mirror the graph's raw -> merged map, merged voxel sets and frame sets (untimed)."""
        self.merged_of_raw = graph.merged_of_raw.tolist()
        slots = torch.arange(self.obs.shape[0], device=graph.device)
        point, merged = graph.membership(slots)
        order = torch.argsort(merged, stable=True)
        counts = torch.bincount(merged, minlength=graph.num_merged).tolist()
        self.merged_voxels = list(torch.split(slots[point[order]].cpu(), counts))
        self.merged_voxels = [voxels.numpy() for voxels in self.merged_voxels]
        mapping = np.asarray(self.merged_of_raw, np.int64)
        alive = mapping >= 0
        self.frames = np.zeros((max(graph.num_merged, 1) * 2, self.obs.shape[1]), np.float32)
        self.frames[mapping[alive], np.asarray(self.raw_frame, np.int64)[alive]] = 1.0

    def reserve_rows(self, num_slots: int) -> None:
        """Grow ``Obs`` to at least ``num_slots`` rows by doubling (untimed)."""
        rows = self.obs.shape[0]
        if num_slots > rows:
            grown = np.zeros((max(num_slots, 2 * rows), self.obs.shape[1]), np.uint8)
            grown[:rows] = self.obs
            self.obs = grown

    def insert(self, frame: int, keyframe: dict) -> dict:
        """Insert one keyframe; return ``{(new id, old id): (C[new, old], C[old, new])}``."""
        self.obs[keyframe['observed_slots'], frame] = 1
        self.obs[keyframe['mask_slots'], frame] = 1
        offsets = keyframe['mask_offsets']
        masks = [keyframe['mask_slots'][a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        existing = len(self.merged_voxels)
        entries = {}
        for index, voxels in enumerate(masks):
            for target, pair in self._query(voxels, frame).items():
                entries[(existing + index, target)] = pair
        for voxels in masks:
            raw = len(self.raw_voxels)
            for slot in voxels.tolist():
                self.voxel_hash.setdefault(slot, set()).add(raw)
            self.raw_voxels.append(voxels)
            self.raw_frame.append(frame)
            self.merged_of_raw.append(len(self.merged_voxels))
            self._append_merged(voxels, frame)
        return entries

    def _query(self, voxels: np.ndarray, frame: int) -> dict:
        """Query A for one new mask: hash walk, visibility products, gated containment."""
        overlap = {}
        for slot in voxels.tolist():
            merged = {self.merged_of_raw[raw] for raw in self.voxel_hash.get(slot, ())}
            merged.discard(-1)
            for target in merged:
                overlap[target] = overlap.get(target, 0) + 1
        if not overlap:
            return {}
        targets = np.fromiter(overlap.keys(), np.int64, len(overlap))
        observed = self.obs[voxels].astype(np.float32)
        query_seen = ((observed @ self.frames[targets].T) > 0).sum(0)  # vis(q | o)
        query_frames = np.zeros(self.obs.shape[1], np.float32)
        query_frames[frame] = 1.0
        entries = {}
        for target, seen in zip(targets.tolist(), query_seen.tolist()):
            target_voxels = self.merged_voxels[target]
            # vis(o | q): one dense gather of o's observation rows per overlapping mask.
            target_seen = int(((self.obs[target_voxels].astype(np.float32)
                                @ query_frames) > 0).sum())
            entries[target] = (self._gated(overlap[target], target_seen, target_voxels.size),
                               self._gated(overlap[target], seen, voxels.size))
        return entries

    def _gated(self, overlap: int, visible: int, size: int) -> float:
        """Return the gated containment ``overlap / visible`` (method.md 3.6 step 4)."""
        cfg = self.config
        ratio = min(overlap / max(visible, 1), 1.0)
        seen = visible / max(size, 1) > cfg.visible_ratio_min or visible > cfg.visible_min_voxels
        return ratio if seen and ratio > cfg.contain_min else 0.0

    def _append_merged(self, voxels: np.ndarray, frame: int) -> None:
        """Add a weight-1 merged mask with its one-hot frame row (capacity doubling)."""
        merged = len(self.merged_voxels)
        if merged >= self.frames.shape[0]:
            grown = np.zeros((2 * max(merged, 1), self.frames.shape[1]), np.float32)
            grown[:merged] = self.frames[:merged]
            self.frames = grown
        self.frames[merged] = 0.0
        self.frames[merged, frame] = 1.0
        self.merged_voxels.append(voxels)


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels so host timers measure the device work."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(device: torch.device, call, *args):
    """Return ``(milliseconds, result)`` of ``call(*args)``, device-synchronised."""
    _synchronize(device)
    start = time.perf_counter()
    result = call(*args)
    _synchronize(device)
    return (time.perf_counter() - start) * 1e3, result


def _percentiles(values) -> dict:
    """Return count, p50, p95 and total (ms) of a list of milliseconds."""
    if not values:
        return {'count': 0, 'p50_ms': None, 'p95_ms': None, 'total_ms': 0.0}
    return {'count': len(values), 'p50_ms': float(np.percentile(values, 50)),
            'p95_ms': float(np.percentile(values, 95)), 'total_ms': float(np.sum(values))}


def _to_device(keyframe: dict, device: torch.device) -> dict:
    """Move one keyframe's arrays to ``device`` as tensors (slots int64)."""
    return {name: torch.from_numpy(np.asarray(value)).to(device)
            for name, value in keyframe.items()}


def _compare(graph: MaskGraph, entries: dict) -> float:
    """Return the largest |C_graph - C_reference| over the reference's new entries."""
    if not entries:
        return 0.0
    pairs = torch.tensor(list(entries.keys()))
    expected = torch.tensor(list(entries.values()))
    containment = graph.containment.cpu()
    got = torch.stack([containment[pairs[:, 0], pairs[:, 1]],
                       containment[pairs[:, 1], pairs[:, 0]]], 1)
    return float((got - expected).abs().max())


def run(args: argparse.Namespace) -> dict:
    """Stream every keyframe into the graph (and the baseline); return raw measurements."""
    device = torch.device(args.device)
    config = SegmenterConfig(descriptor='none')
    world = SyntheticWorld(args)
    graph = MaskGraph(config, device)
    baseline = ReferencePattern(config, args.baseline_keyframes)
    seen = torch.zeros(world.num_slots, dtype=torch.bool, device=device)
    log = {'insert_ms': [], 'merge_ms': [], 'baseline_ms': [], 'num_merged': [],
           'memory_bytes': {}, 'merge_stats': [], 'max_containment_diff': 0.0,
           'masks_per_keyframe': [], 'world_slots': world.num_slots, 'compared_pairs': 0}
    quarters = {args.keyframes * q // 4: f'{q}/4' for q in (1, 2, 3)}
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    for frame in range(args.keyframes):
        keyframe = world.keyframe(frame)
        tensors = _to_device(keyframe, device)
        log['masks_per_keyframe'].append(len(keyframe['scores']))
        entries = None
        if frame < args.baseline_keyframes:
            baseline.reserve_rows(int(keyframe['observed_slots'].max(initial=0)) + 1)
            elapsed, entries = _timed(device, baseline.insert, frame, keyframe)
            log['baseline_ms'].append(elapsed)
        elapsed, _ = _timed(device, graph.insert_frame, tensors['observed_slots'],
                            tensors['mask_slots'], tensors['mask_offsets'],
                            tensors['features'], tensors['scores'])
        log['insert_ms'].append(elapsed)
        if entries is not None:
            log['compared_pairs'] += len(entries)
            log['max_containment_diff'] = max(log['max_containment_diff'],
                                              _compare(graph, entries))
        seen[tensors['observed_slots']] = True
        if (frame + 1) % config.merge_every_n_keyframes == 0:
            point_slots = torch.nonzero(seen).squeeze(1)
            elapsed, stats = _timed(device, graph.merge_round, point_slots, None)
            log['merge_ms'].append(elapsed)
            log['merge_stats'].append(stats)
            if frame < args.baseline_keyframes:
                baseline.sync(graph)
        log['num_merged'].append(graph.num_merged)
        if device.type == 'cuda' and frame + 1 in quarters:
            log['memory_bytes'][quarters[frame + 1]] = torch.cuda.max_memory_allocated(device)
    if device.type == 'cuda':
        log['memory_bytes']['end'] = torch.cuda.max_memory_allocated(device)
    return log


def summarize(args: argparse.Namespace, log: dict) -> dict:
    """Turn the raw measurements into the report (percentiles, ratios, memory)."""
    window = min(100, args.keyframes)
    first, last = _percentiles(log['insert_ms'][:window]), _percentiles(log['insert_ms'][-window:])
    compared = len(log['baseline_ms'])
    ours = _percentiles(log['insert_ms'][:compared])
    reference = _percentiles(log['baseline_ms'])
    merged = log['num_merged']
    return {
        'device': args.device, 'arguments': vars(args), 'world_slots': log['world_slots'],
        'masks_per_keyframe_mean': float(np.mean(log['masks_per_keyframe'])),
        'raw_masks': int(np.sum(log['masks_per_keyframe'])),
        'insert_first': first, 'insert_last': last,
        'insert_last_over_first_p50': last['p50_ms'] / first['p50_ms'],
        'insert_last_over_first_p95': last['p95_ms'] / first['p95_ms'],
        'merge_round': _percentiles(log['merge_ms']),
        'num_merged_max': max(merged), 'num_merged_final': merged[-1],
        'num_merged_every_10': merged[::10],
        'merged_by_stage1': int(sum(s['stage1_merged'] for s in log['merge_stats'])),
        'merged_by_stage2': int(sum(s['stage2_merged'] for s in log['merge_stats'])),
        'pruned': int(sum(s['removed'] for s in log['merge_stats'])),
        'max_memory_allocated_bytes': log['memory_bytes'],
        'baseline': {'keyframes': compared, 'reference_pattern': reference, 'ours': ours,
                     'speedup_total': (reference['total_ms'] / ours['total_ms']
                                       if compared else None),
                     'speedup_p50': (reference['p50_ms'] / ours['p50_ms']
                                     if compared else None),
                     'compared_pairs': log['compared_pairs'],
                     'max_containment_diff': log['max_containment_diff']},
        'load_average': os.getloadavg()[0],
    }


def print_report(report: dict) -> None:
    """Print the summary table."""
    print(f'{"timing":<34}{"count":>7}{"p50 ms":>10}{"p95 ms":>10}{"total s":>10}')
    baseline = report['baseline']
    rows = (('insert, first 100 keyframes', report['insert_first']),
            ('insert, last 100 keyframes', report['insert_last']),
            ('merge round', report['merge_round']),
            ('baseline keyframes: reference', baseline['reference_pattern']),
            ('baseline keyframes: ours', baseline['ours']))
    for name, row in rows:
        if row['count']:
            print(f'{name:<34}{row["count"]:>7}{row["p50_ms"]:>10.2f}{row["p95_ms"]:>10.2f}'
                  f'{row["total_ms"] / 1e3:>10.2f}')
    print(f'last/first insert: p50 {report["insert_last_over_first_p50"]:.2f}x, '
          f'p95 {report["insert_last_over_first_p95"]:.2f}x')
    if baseline['keyframes']:
        print(f'speed-up vs reference pattern over {baseline["keyframes"]} keyframes: '
              f'{baseline["speedup_total"]:.1f}x total, {baseline["speedup_p50"]:.1f}x p50; '
              f'max |C diff| {baseline["max_containment_diff"]:.2e} over '
              f'{baseline["compared_pairs"]} overlapping pairs')
    print(f'{report["raw_masks"]} raw masks ({report["masks_per_keyframe_mean"]:.1f} per '
          f'keyframe), {report["world_slots"]} world slots, merged masks max '
          f'{report["num_merged_max"]} final {report["num_merged_final"]}; merged by stage 1 '
          f'{report["merged_by_stage1"]}, stage 2 {report["merged_by_stage2"]}, pruned '
          f'{report["pruned"]}')
    memory = report['max_memory_allocated_bytes']
    if memory:
        print('max_memory_allocated: ' + ', '.join(
            f'{name} {value / 2 ** 20:.0f} MiB' for name, value in memory.items()))
    print(f'load average {report["load_average"]:.2f}')


def main(argv=None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    if args.baseline_keyframes > args.keyframes:
        raise SystemExit('--baseline-keyframes must not exceed --keyframes')
    start = time.perf_counter()
    report = summarize(args, run(args))
    report['wall_s'] = time.perf_counter() - start
    print_report(report)
    print(f'wall {report["wall_s"]:.1f} s')
    temporary = args.json + '.tmp'
    with open(temporary, 'w') as handle:
        json.dump(report, handle, indent=2)
    os.replace(temporary, args.json)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
