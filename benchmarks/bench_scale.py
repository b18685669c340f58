"""ScanNet-scale latency and memory of the mask graph, against the reference's access pattern.

Stream. Pure slot space (no rendering, no lifting): a world of objects that each own a
contiguous range of voxel slots, a "camera" that sweeps through them so the map grows, and
per keyframe ~45 masks (a random 70-100 % subset of each visible object, 10 % of them split
in two with a boundary band that belongs to neither half, 5 % merged with the neighbouring
object) with CLIP-like features (object prototype + noise). ``--observed masks`` (default)
reports as the frame's observation set the union of the pre-boundary mask sets, which is
what lifting reports; ``--observed full`` reports the whole slot range of every visible
object, so all voxels of an object share one observation pattern (flattering for any
pattern-grouping visibility code). ``MaskGraph`` gets every keyframe, with a merge round
every ``merge_every_n_keyframes``.

Baseline. ``ReferencePattern`` replays the reference's insertion (method.md 3.4-3.6, query
A): a Python list of Python sets slot -> raw ids, a Python list raw -> merged id mirrored
from the graph, a Python walk per voxel of every new mask counting overlapping merged ids,
``vis(q|o)`` as one product of the mask's observation rows with the overlapping masks' frame
rows, ``vis(o|q)`` in a Python loop with one gather of the observation rows of every
overlapping merged mask, then the gated containment. Its state is maintained for every
keyframe; its full insertion (observation bits, queries, hash insertion) is timed only on
sampled keyframes (``--baseline-every``, the first ``--baseline-early`` and the last), next
to ``MaskGraph.insert_frame`` on the same keyframe, and the containment values of both are
compared. Two variants of the hash walk:

- ``lenient``: a removed raw id (merged id -1) is dropped from the per-voxel set of merged
  ids with one set ``discard``;
- ``faithful``: what the reference does once any raw id was removed (method.md 3.6 step 1,
  hot spots H1/H2): every query call scans the raw -> merged list for -1, rebuilds the list
  of valid merged ids from the whole map, and tests every raw id of every voxel with ``in``
  on that list, so a query costs ``O(|V_q| * s * M)`` (``s`` raw ids per voxel, ``M``
  merged masks). Sampled more sparsely (``--faithful-every``); after one sample took
  longer than ``--faithful-budget-s`` no further faithful sample is taken.

Both are kinder than the reference: host numpy and Python without the GPU<->CPU coordinate
round trips (H4), per-mask kernel launches and ``.item()`` syncs; the observation matrix is
bit-packed (uint64 words of 64 keyframes, ``slots x ceil(keyframes / 64)``, 0.9 GB for 5M
slots x 1500 keyframes) instead of a float32 GPU matrix of 25.6 MB per seg frame (H3), so
the two products keep their shapes and growth (``|V_q| x F`` against ``n_o`` frame rows;
``|V_o| x F`` per overlapping mask, all F columns gathered) but do 64 frames per AND, on
one host core rather than GPU bandwidth; its columns are sized for the whole run
(``--keyframes``) like the reference's; the hash list grows by doubling outside the timers
instead of being preallocated; timers run with the garbage collector off and the
baseline's containers are frozen out of it (``gc.freeze``), so no collection walks the
millions of sets of the hash. Merge-side work (query B, H7), FCGF (H6) and lifting (H5) are
not replayed. ``sync`` (untimed) re-mirrors the graph's raw -> merged map, merged voxel
sets and frame rows, lazily: before a sampled keyframe when a merge round ran since the
last one.

Report: insert latency of the first and last 100 keyframes, merge rounds, speed-up
(baseline ms / ours ms on the same sampled keyframes, p50 of the per-keyframe ratios and
ratio of the totals) split by the number of merged masks at query time, max |C diff|, and
at the quarter marks and the end ``max_memory_allocated``, ``memory_allocated`` and
``MaskGraph.state_nbytes()`` (where the graph has it).

    PYTHONPATH=. python benchmarks/bench_scale.py --device cuda --json bench_scale.json
"""

import argparse
import contextlib
import functools
import gc
import json
import os
import time
from typing import Optional

import numpy as np
import torch

from onlineanyseg_ros.core.config import SegmenterConfig
from onlineanyseg_ros.core.mask_graph import MaskGraph
from onlineanyseg_ros.core.profiling import HostSyncCounter

_WORD_BITS = 64  # keyframes per packed observation word of the baseline
_VARIANTS = ('lenient', 'faithful')


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
    parser.add_argument('--observed', choices=('masks', 'full'), default='masks',
                        help='observation set: union of pre-boundary masks, or whole objects')
    parser.add_argument('--baseline', choices=('both', 'lenient', 'faithful', 'none'),
                        default='both', help='reference-pattern variants to time')
    parser.add_argument('--baseline-every', type=int, default=50,
                        help='time the lenient baseline every K-th keyframe')
    parser.add_argument('--baseline-early', type=int, default=5,
                        help='also time keyframes 1..N of both variants')
    parser.add_argument('--faithful-every', type=int, default=250,
                        help='time the faithful baseline every K-th keyframe')
    parser.add_argument('--faithful-budget-s', type=float, default=60.0,
                        help='no faithful sample after one that took longer (s)')
    parser.add_argument('--size-buckets', type=int, nargs=2, default=(1000, 2500),
                        metavar=('LOW', 'HIGH'), help='merged-mask counts splitting the ratios')
    parser.add_argument('--count-syncs', action='store_true',
                        help='count the host syncs of every insert and merge round (CUDA; '
                             'counting slows each sync: take timings from a run without)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', default='bench_scale.json', help='output JSON path')
    args = parser.parse_args(argv)
    if min(args.baseline_every, args.faithful_every) < 1 or args.keyframes < 1:
        parser.error('--keyframes, --baseline-every and --faithful-every must be >= 1')
    return args


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

        Keys: ``observed_slots`` (per ``--observed``), ``mask_slots`` and ``mask_offsets``
        (packed masks after boundary removal, pairwise disjoint), ``features`` ``(k, D)``,
        ``scores`` ``(k,)`` in ``[0.6, 1]``.
        """
        rng = np.random.default_rng((self.args.seed, frame))
        visible = self.visible_objects(frame, rng)
        subsets = self._subsets(visible, rng)
        draws = rng.random((visible.size, 2))
        masks, owners = [], []
        index = 0
        while index < visible.size:
            obj, slots = visible[index], subsets[index]
            neighbour = index + 1 < visible.size and visible[index + 1] == obj + 1
            band = max(1, slots.size // 50)
            if neighbour and draws[index, 0] < 0.05:
                masks.append(np.concatenate([slots, subsets[index + 1]]))
                owners.append((obj, obj + 1))
                index += 1
            elif draws[index, 1] < 0.1 and slots.size > 4 * band:
                # Two pre-boundary halves overlapping on 2 * band slots: the overlap is
                # boundary (observed, in neither accepted mask; method.md 3.4 step 3).
                cut = slots.size // 2
                masks += [slots[:cut - band], slots[cut + band:]]
                owners += [(obj, -1), (obj, -1)]
            else:
                masks.append(slots)
                owners.append((obj, -1))
            index += 1
        if self.args.observed == 'full':
            subsets = [np.arange(self.starts[o], self.starts[o] + self.sizes[o]) for o in visible]
        empty = [np.zeros(0, np.int64)]
        return {'observed_slots': np.concatenate(subsets + empty),
                'mask_slots': np.concatenate(masks + empty),
                'mask_offsets': np.concatenate([[0], np.cumsum([m.size for m in masks])]),
                'features': self._features(np.asarray(owners, np.int64).reshape(-1, 2), rng),
                'scores': rng.uniform(0.6, 1.0, len(masks)).astype(np.float32)}

    def _subsets(self, objects: np.ndarray, rng: np.random.Generator) -> list:
        """Return one random 70-100 % subset per object: int64 ascending slot arrays."""
        if not objects.size:
            return []
        sizes = self.sizes[objects]
        offsets = np.cumsum(sizes) - sizes  # of each object's first slot in the flat draw
        keep_share = np.repeat(rng.uniform(0.7, 1.0, objects.size), sizes)
        slots = np.repeat(self.starts[objects] - offsets, sizes) + np.arange(int(sizes.sum()))
        kept = rng.random(slots.size) < keep_share
        counts = np.add.reduceat(kept.astype(np.int64), offsets)
        return np.split(slots[kept].astype(np.int64), np.cumsum(counts)[:-1])

    def _features(self, owners: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return float32 ``(k, D)`` unit rows: summed owner prototypes plus noise.

        ``owners`` is int64 ``(k, 2)``: first owner, second owner or -1.
        """
        rows = self.prototypes[owners[:, 0]].copy()
        second = owners[:, 1] >= 0
        rows[second] += self.prototypes[owners[second, 1]]
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        noise = rng.standard_normal(rows.shape, np.float32)
        rows += noise * np.float32(self.args.feature_noise / self.args.feature_dim ** 0.5)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class ReferencePattern:
    """The reference's insertion access pattern (method.md 3.5-3.6) on host containers.

    State: ``voxel_hash`` (Python list, slot -> None or set of raw ids; never shrinks),
    ``merged_of_raw`` (Python list, -1 = removed), per merged id its voxel array and packed
    frame row ``frames`` (uint64 ``(capacity, W)``), and ``obs`` (uint64 ``(slots, W)``,
    bit ``f % 64`` of word ``f // 64`` set when keyframe ``f`` observed the slot), with
    ``W = ceil(num_frames / 64)`` fixed like the reference's ``seg_frame_num``.
    """

    def __init__(self, config: SegmenterConfig, num_frames: int) -> None:
        """Create empty containers for ``num_frames`` keyframes."""
        self.config = config
        self.words = -(-num_frames // _WORD_BITS)
        self.voxel_hash = []
        self.raw_frame = []
        self.merged_of_raw = []
        self.merged_voxels = []  # int64 slot arrays per merged id
        self.obs = np.zeros((0, self.words), np.uint64)
        self.frames = np.zeros((0, self.words), np.uint64)
        self.num_slots = 0  # one past the largest slot seen
        self.stale = False  # a merge round ran since the last sync

    def sync(self, graph: MaskGraph) -> None:
        """Mirror the graph's raw -> merged map, merged voxel sets and frame rows (untimed)."""
        self.merged_of_raw = graph.merged_of_raw.tolist()
        slots = torch.arange(self.num_slots, device=graph.device)
        point, merged = graph.membership(slots)
        order = torch.argsort(merged, stable=True)
        counts = torch.bincount(merged, minlength=graph.num_merged).tolist()
        self.merged_voxels = [v.numpy() for v in torch.split(slots[point[order]].cpu(), counts)]
        mapping = np.asarray(self.merged_of_raw, np.int64)
        frame = np.asarray(self.raw_frame, np.int64)
        alive = mapping >= 0
        self.frames = np.zeros((max(graph.num_merged, 1) * 2, self.words), np.uint64)
        np.bitwise_or.at(self.frames, (mapping[alive], frame[alive] // _WORD_BITS),
                         np.left_shift(np.uint64(1), (frame[alive] % _WORD_BITS)
                                       .astype(np.uint64)))
        self.stale = False

    def reserve(self, keyframe: dict) -> None:
        """Grow ``obs`` and the hash list to the keyframe's slots by doubling (untimed)."""
        high = int(max(keyframe['observed_slots'].max(initial=-1),
                       keyframe['mask_slots'].max(initial=-1))) + 1
        self.num_slots = max(self.num_slots, high)
        rows = self.obs.shape[0]
        if high > rows:
            grown = np.zeros((max(high, 2 * rows), self.words), np.uint64)
            grown[:rows] = self.obs
            self.obs = grown
            self.voxel_hash.extend([None] * (grown.shape[0] - rows))

    def observe(self, frame: int, keyframe: dict) -> None:
        """Set keyframe ``frame``'s observation bit for its observed and mask slots."""
        word, bit = divmod(frame, _WORD_BITS)
        self.obs[keyframe['observed_slots'], word] |= np.uint64(1 << bit)
        self.obs[keyframe['mask_slots'], word] |= np.uint64(1 << bit)

    def query(self, frame: int, keyframe: dict, faithful: bool) -> dict:
        """Run query A for every new mask: ``{(new id, old id): (C[new, old], C[old, new])}``."""
        existing = len(self.merged_voxels)
        entries = {}
        for index, voxels in enumerate(_split_masks(keyframe)):
            for target, pair in self._query(voxels, frame, faithful).items():
                entries[(existing + index, target)] = pair
        return entries

    def insert(self, frame: int, keyframe: dict) -> None:
        """Add the new masks to the hash, the raw map and the merged bookkeeping."""
        word, bit = divmod(frame, _WORD_BITS)
        for voxels in _split_masks(keyframe):
            raw = len(self.raw_frame)
            for slot in voxels.tolist():
                if self.voxel_hash[slot] is None:
                    self.voxel_hash[slot] = set()
                self.voxel_hash[slot].add(raw)
            self.raw_frame.append(frame)
            merged = len(self.merged_voxels)
            self.merged_of_raw.append(merged)
            if merged >= self.frames.shape[0]:
                grown = np.zeros((2 * max(merged, 1), self.words), np.uint64)
                grown[:merged] = self.frames[:merged]
                self.frames = grown
            self.frames[merged] = 0
            self.frames[merged, word] = np.uint64(1 << bit)
            self.merged_voxels.append(voxels)

    def _query(self, voxels: np.ndarray, frame: int, faithful: bool) -> dict:
        """Query A for one new mask: hash walk, visibility products, gated containment."""
        overlap = self._overlap_faithful(voxels) if faithful else self._overlap(voxels)
        if not overlap:
            return {}
        targets = np.fromiter(overlap.keys(), np.int64, len(overlap))
        # vis(q | o): the |V_q| x F observation rows against the n_o frame rows of H.
        observed = self.obs[voxels]
        query_seen = ((observed[:, None, :] & self.frames[targets][None]) != 0).any(2).sum(0)
        query_row = np.zeros(self.words, np.uint64)
        query_row[frame // _WORD_BITS] = np.uint64(1 << (frame % _WORD_BITS))
        entries = {}
        for target, seen in zip(targets.tolist(), query_seen.tolist()):
            target_voxels = self.merged_voxels[target]
            # vis(o | q): one gather of o's |V_o| x F observation rows per overlapping mask.
            target_seen = int(((self.obs[target_voxels] & query_row) != 0).any(1).sum())
            entries[target] = (self._gated(overlap[target], target_seen, target_voxels.size),
                               self._gated(overlap[target], seen, voxels.size))
        return entries

    def _overlap(self, voxels: np.ndarray) -> dict:
        """Count ``|V_q & V_o|`` per merged id, dropping removed raw ids by a set discard."""
        mapping, voxel_hash = self.merged_of_raw, self.voxel_hash
        overlap = {}
        for slot in voxels.tolist():
            raws = voxel_hash[slot]
            if raws is None:
                continue
            merged = {mapping[raw] for raw in raws}
            merged.discard(-1)
            for target in merged:
                overlap[target] = overlap.get(target, 0) + 1
        return overlap

    def _overlap_faithful(self, voxels: np.ndarray) -> dict:
        """Count ``|V_q & V_o|`` per merged id the reference's way (list rebuild, ``in``)."""
        mapping, voxel_hash = self.merged_of_raw, self.voxel_hash
        if -1 not in mapping:
            return self._overlap(voxels)
        # The reference's expression, list then set then list, kept for its cost.
        valid = list(set([merged for merged in mapping if merged != -1]))  # noqa: C403
        overlap = {}
        for slot in voxels.tolist():
            raws = voxel_hash[slot]
            if raws is None:
                continue
            for target in {mapping[raw] for raw in raws if mapping[raw] in valid}:
                overlap[target] = overlap.get(target, 0) + 1
        return overlap

    def _gated(self, overlap: int, visible: int, size: int) -> float:
        """Return the gated containment ``overlap / visible`` (method.md 3.6 step 4)."""
        cfg = self.config
        ratio = min(overlap / max(visible, 1), 1.0)
        seen = visible / max(size, 1) > cfg.visible_ratio_min or visible > cfg.visible_min_voxels
        return ratio if seen and ratio > cfg.contain_min else 0.0


def _split_masks(keyframe: dict) -> list:
    """Return the keyframe's masks as a list of int64 slot arrays."""
    offsets = keyframe['mask_offsets']
    return [keyframe['mask_slots'][a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels so host timers measure the device work."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(device: torch.device, call, *args, syncs: Optional[HostSyncCounter] = None):
    """Return ``(milliseconds, result)`` of ``call(*args)``, device-synchronised.

    The garbage collector is off inside (as in ``timeit``): a collection started by either
    side would otherwise walk the baseline's millions of sets inside someone's timer.
    ``syncs``: counts the host syncs of the call (not the timer's own).
    """
    _synchronize(device)
    gc.disable()
    try:
        start = time.perf_counter()
        with syncs.counting() if syncs is not None else contextlib.nullcontext():
            result = call(*args)
        _synchronize(device)
        return (time.perf_counter() - start) * 1e3, result
    finally:
        gc.enable()


def _percentiles(values) -> dict:
    """Return count, p50, p95 and total (ms) of a list of milliseconds."""
    if not len(values):
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
    pairs = torch.tensor(list(entries.keys()), device=graph.device)
    expected = torch.tensor(list(entries.values()))
    containment = graph.containment
    got = torch.stack([containment[pairs[:, 0], pairs[:, 1]],
                       containment[pairs[:, 1], pairs[:, 0]]], 1).cpu()
    return float((got - expected).abs().max())


def _is_sampled(args: argparse.Namespace, frame: int, every: int) -> bool:
    """Return whether keyframe ``frame`` is timed for a variant sampled every ``every``."""
    return (0 < frame <= args.baseline_early or (frame > 0 and frame % every == 0)
            or frame == args.keyframes - 1)


def _baseline_step(args, baseline: ReferencePattern, graph: MaskGraph, frame: int,
                   keyframe: dict, log: dict) -> dict:
    """Advance the baseline by one keyframe; return ``{variant: (ms, entries)}`` if timed.

    Times the observation bits, each sampled variant's queries and the hash insertion; a
    variant's insertion time is its queries plus the shared observation and hash steps.
    """
    device = graph.device
    baseline.reserve(keyframe)
    sampled = {'lenient': args.baseline in ('lenient', 'both')
               and _is_sampled(args, frame, args.baseline_every),
               'faithful': args.baseline in ('faithful', 'both')
               and log['faithful_stopped_at'] is None
               and _is_sampled(args, frame, args.faithful_every)}
    if not any(sampled.values()):
        baseline.observe(frame, keyframe)
        baseline.insert(frame, keyframe)
        gc.freeze()  # the hash's sets hold no cycles; keep later collections short
        return {}
    if baseline.stale:
        baseline.sync(graph)
    shared_ms, _ = _timed(device, baseline.observe, frame, keyframe)
    results = {}
    for variant in _VARIANTS:
        if sampled[variant]:
            results[variant] = _timed(device, baseline.query, frame, keyframe,
                                      variant == 'faithful')
    elapsed, _ = _timed(device, baseline.insert, frame, keyframe)
    gc.freeze()
    shared_ms += elapsed
    faithful = results.get('faithful')
    if faithful and faithful[0] > 1e3 * args.faithful_budget_s:
        log['faithful_stopped_at'] = frame
    return {variant: (ms + shared_ms, entries) for variant, (ms, entries) in results.items()}


def _memory_mark(graph: MaskGraph, device: torch.device) -> dict:
    """Return the device allocator's counters and the graph's state bytes per field."""
    mark = {}
    if device.type == 'cuda':
        mark['max_memory_allocated'] = torch.cuda.max_memory_allocated(device)
        mark['memory_allocated'] = torch.cuda.memory_allocated(device)
    state_nbytes = getattr(graph, 'state_nbytes', None)
    if state_nbytes is not None:
        mark['state_nbytes'] = {name: int(value) for name, value in state_nbytes().items()}
    return mark


def run(args: argparse.Namespace) -> dict:
    """Stream every keyframe into the graph (and the baseline); return raw measurements."""
    device = torch.device(args.device)
    config = SegmenterConfig(descriptor='none')
    world = SyntheticWorld(args)
    graph = MaskGraph(config, device)
    baseline = None if args.baseline == 'none' else ReferencePattern(config, args.keyframes)
    seen = torch.zeros(world.num_slots, dtype=torch.bool, device=device)
    log = {'insert_ms': [], 'merge_ms': [], 'generate_ms': [], 'num_merged': [],
           'samples': [], 'memory': {}, 'merge_stats': [], 'masks_per_keyframe': [],
           'world_slots': world.num_slots, 'faithful_stopped_at': None}
    insert_syncs, merge_syncs = HostSyncCounter(device), HostSyncCounter(device)
    marks = {args.keyframes * q // 4: f'{q}/4' for q in (1, 2, 3)}
    marks[args.keyframes] = 'end'
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    for frame in range(args.keyframes):
        elapsed, keyframe = _timed(torch.device('cpu'), world.keyframe, frame)
        log['generate_ms'].append(elapsed)
        tensors = _to_device(keyframe, device)
        log['masks_per_keyframe'].append(len(keyframe['scores']))
        existing = graph.num_merged
        timed = {} if baseline is None else _baseline_step(args, baseline, graph, frame,
                                                           keyframe, log)
        # The slot-space size is known, as the segmenter's voxel hash knows it.
        elapsed, _ = _timed(device, functools.partial(graph.insert_frame,
                                                      num_slots=world.num_slots),
                            tensors['observed_slots'], tensors['mask_slots'],
                            tensors['mask_offsets'], tensors['features'], tensors['scores'],
                            syncs=insert_syncs if args.count_syncs else None)
        log['insert_ms'].append(elapsed)
        if timed:
            sample = {'frame': frame, 'num_merged': existing, 'ours_ms': elapsed,
                      'list_path': -1 in baseline.merged_of_raw}
            for variant, (ms, entries) in timed.items():
                sample[variant] = {'ms': ms, 'pairs': len(entries),
                                   'max_diff': _compare(graph, entries)}
            log['samples'].append(sample)
        seen[tensors['observed_slots']] = True
        if (frame + 1) % config.merge_every_n_keyframes == 0:
            point_slots = torch.nonzero(seen).squeeze(1)
            elapsed, stats = _timed(device, graph.merge_round, point_slots, None,
                                    syncs=merge_syncs if args.count_syncs else None)
            log['merge_ms'].append(elapsed)
            log['merge_stats'].append(stats)
            if baseline is not None:
                baseline.stale = True
        log['num_merged'].append(graph.num_merged)
        if frame + 1 in marks:
            log['memory'][marks[frame + 1]] = _memory_mark(graph, device)
    if baseline is not None:
        log['baseline_host_nbytes'] = int(baseline.obs.nbytes + baseline.frames.nbytes)
    if args.count_syncs and insert_syncs.enabled:
        log['syncs_per_insert'] = insert_syncs.count / args.keyframes
        log['syncs_per_merge_round'] = merge_syncs.count / max(1, len(log['merge_ms']))
    return log


def _speedups(samples: list, variant: str) -> dict:
    """Summarise one variant's samples: ours and baseline ms, speed-up p50 and total."""
    timed = [s for s in samples if variant in s]
    ours = [s['ours_ms'] for s in timed]
    reference = [s[variant]['ms'] for s in timed]
    summary = {'ours': _percentiles(ours), 'reference_pattern': _percentiles(reference),
               'speedup_p50': None, 'speedup_total': None}
    if timed:
        ratios = np.asarray(reference) / np.maximum(ours, 1e-9)
        summary['speedup_p50'] = float(np.median(ratios))
        summary['speedup_total'] = float(np.sum(reference) / max(np.sum(ours), 1e-9))
    return summary


def summarize_baseline(args: argparse.Namespace, log: dict) -> dict:
    """Per variant: samples, max |C diff|, and speed-ups split by merged-mask count."""
    low, high = args.size_buckets
    buckets = {'all': lambda n: True, f'<{low}': lambda n: n < low,
               f'{low}-{high}': lambda n: low <= n < high, f'>={high}': lambda n: n >= high}
    report = {}
    for variant in _VARIANTS:
        samples = [s for s in log['samples'] if variant in s]
        if not samples:
            continue
        report[variant] = {
            'frames': [s['frame'] for s in samples],
            'num_merged': [s['num_merged'] for s in samples],
            'list_path': [s['list_path'] for s in samples],
            'ms': [s[variant]['ms'] for s in samples],
            'ours_ms': [s['ours_ms'] for s in samples],
            'compared_pairs': int(sum(s[variant]['pairs'] for s in samples)),
            'max_containment_diff': max(s[variant]['max_diff'] for s in samples),
            'by_num_merged': {name: _speedups([s for s in samples if test(s['num_merged'])],
                                              variant) for name, test in buckets.items()}}
    if 'faithful' in report:
        report['faithful']['stopped_after_frame'] = log['faithful_stopped_at']
    return report


def summarize(args: argparse.Namespace, log: dict) -> dict:
    """Turn the raw measurements into the report (percentiles, ratios, memory)."""
    window = min(100, args.keyframes)
    first, last = _percentiles(log['insert_ms'][:window]), _percentiles(log['insert_ms'][-window:])
    merged = log['num_merged']
    return {
        'device': args.device, 'arguments': vars(args), 'world_slots': log['world_slots'],
        'masks_per_keyframe_mean': float(np.mean(log['masks_per_keyframe'])),
        'raw_masks': int(np.sum(log['masks_per_keyframe'])),
        'generate': _percentiles(log['generate_ms']),
        'insert_first': first, 'insert_last': last,
        'insert_last_over_first_p50': last['p50_ms'] / first['p50_ms'],
        'insert_last_over_first_p95': last['p95_ms'] / first['p95_ms'],
        'merge_round': _percentiles(log['merge_ms']),
        'num_merged_max': max(merged), 'num_merged_final': merged[-1],
        'num_merged_every_10': merged[::10],
        'merged_by_stage1': int(sum(s['stage1_merged'] for s in log['merge_stats'])),
        'merged_by_stage2': int(sum(s['stage2_merged'] for s in log['merge_stats'])),
        'pruned': int(sum(s['removed'] for s in log['merge_stats'])),
        'memory': log['memory'],
        'baseline': summarize_baseline(args, log),
        'baseline_host_nbytes': log.get('baseline_host_nbytes'),
        'load_average': os.getloadavg()[0],
        'syncs_per_insert': log.get('syncs_per_insert'),
        'syncs_per_merge_round': log.get('syncs_per_merge_round'),
    }


def _print_timing(name: str, row: dict) -> None:
    """Print one row of the timing table (skipped when empty)."""
    if row['count']:
        print(f'{name:<30}{row["count"]:>7}{row["p50_ms"]:>11.2f}{row["p95_ms"]:>11.2f}'
              f'{row["total_ms"] / 1e3:>10.2f}')


def print_baseline(report: dict) -> None:
    """Print the speed-ups per variant and merged-mask bucket, then the C check."""
    baseline = report['baseline']
    if not baseline:
        return
    print('\nreference pattern on sampled keyframes; speed-up = baseline ms / ours ms on '
          'the same keyframes')
    print(f'{"variant":<10}{"merged":>11}{"n":>5}{"ours p50":>10}{"base p50":>11}'
          f'{"x p50":>8}{"ours s":>9}{"base s":>9}{"x total":>9}')
    for variant, summary in baseline.items():
        for bucket, row in summary['by_num_merged'].items():
            ours, reference = row['ours'], row['reference_pattern']
            if ours['count']:
                print(f'{variant:<10}{bucket:>11}{ours["count"]:>5}{ours["p50_ms"]:>10.2f}'
                      f'{reference["p50_ms"]:>11.1f}{row["speedup_p50"]:>7.1f}x'
                      f'{ours["total_ms"] / 1e3:>9.2f}{reference["total_ms"] / 1e3:>9.2f}'
                      f'{row["speedup_total"]:>8.1f}x')
    for variant, summary in baseline.items():
        print(f'{variant}: max |C diff| {summary["max_containment_diff"]:.2e} over '
              f'{summary["compared_pairs"]} overlapping pairs, {len(summary["frames"])} '
              f'keyframes ({sum(summary["list_path"])} with a removed raw id)')
    stopped = baseline.get('faithful', {}).get('stopped_after_frame')
    if stopped is not None:
        print(f'faithful: no samples after keyframe {stopped} (it took '
              f'{baseline["faithful"]["ms"][-1] / 1e3:.1f} s > --faithful-budget-s)')


def print_memory(report: dict) -> None:
    """Print the allocator counters and the graph's state bytes at each mark (MiB)."""
    mib = 2 ** 20
    for mark, values in report['memory'].items():
        parts = [f'{name} {values[name] / mib:.0f}'
                 for name in ('max_memory_allocated', 'memory_allocated') if name in values]
        state = values.get('state_nbytes')
        if state:
            fields = ', '.join(f'{name} {value / mib:.1f}' for name, value in state.items())
            parts.append(f'state {sum(state.values()) / mib:.1f} ({fields})')
        if parts:
            print(f'memory MiB at {mark}: ' + '; '.join(parts))
    if report['baseline_host_nbytes']:
        print(f'baseline packed Obs + H on the host: '
              f'{report["baseline_host_nbytes"] / mib:.0f} MiB')


def print_report(report: dict) -> None:
    """Print the summary tables."""
    print(f'{"timing":<30}{"count":>7}{"p50 ms":>11}{"p95 ms":>11}{"total s":>10}')
    for name, key in (('keyframe generation (host)', 'generate'),
                      ('insert, first 100 keyframes', 'insert_first'),
                      ('insert, last 100 keyframes', 'insert_last'),
                      ('merge round', 'merge_round')):
        _print_timing(name, report[key])
    print(f'last/first insert: p50 {report["insert_last_over_first_p50"]:.2f}x, '
          f'p95 {report["insert_last_over_first_p95"]:.2f}x')
    print(f'{report["raw_masks"]} raw masks ({report["masks_per_keyframe_mean"]:.1f} per '
          f'keyframe), {report["world_slots"]} world slots, observed '
          f'{report["arguments"]["observed"]}; merged masks max {report["num_merged_max"]} '
          f'final {report["num_merged_final"]}; merged by stage 1 '
          f'{report["merged_by_stage1"]}, stage 2 {report["merged_by_stage2"]}, pruned '
          f'{report["pruned"]}')
    if report['syncs_per_insert'] is not None:
        print(f'host syncs: {report["syncs_per_insert"]:.1f} per insert, '
              f'{report["syncs_per_merge_round"]:.1f} per merge round (timings above include '
              'the counting)')
    print_baseline(report)
    print_memory(report)
    print(f'load average {report["load_average"]:.2f}')


def main(argv=None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
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
