"""Per-keyframe latency of the segmentation core by stage, on a ScanNet-format sequence.

Feeds every frame of a sequence (e.g. ``onlineanyseg synth`` output) to ``OnlineSegmenter``
with precomputed masks (e.g. the simulated masks of ``onlineanyseg masks``) on the frames
that have them, then exports once. Prints p50/p95/total per stage of the segmenter's
``StageTimer`` (backproject, surface, lift, insert, merge, descriptor, export), the
latency of whole ``integrate`` calls (keyframes without a merge round, and geometry-only
frames; device-synchronized after each call), and writes the same numbers as JSON.

Stage timing: ``--timing sync`` (default) synchronizes the device around every stage, so
each number is the stage's own GPU time; ``--timing events`` keeps the segmenter's CUDA
events (nothing blocks, stages overlap the host work of the next). ``--count-syncs N``
then counts the host syncs per call over the first N frames of a fresh map (CUDA; untimed,
since counting slows every sync). ``--passes N`` feeds the sequence N times into the same
map and also reports the whole calls of the last pass alone: by then the CUDA graphs are
captured and the voxel hash has grown, so it shows the steady state without the warm-up
(the first calls of each input shape, the table's growths).

    python benchmarks/bench_segmenter.py SCENE_DIR MASK_DIR --frames 300 --device cpu
"""

import argparse
import json
import os
import time
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from onlineanyseg_ros.core.config import segmenter_config
from onlineanyseg_ros.core.profiling import HostSyncCounter, latency_summary, StageTimer
from onlineanyseg_ros.core.segmenter import OnlineSegmenter
from onlineanyseg_ros.data.scannet import ScanNetSequence
from onlineanyseg_ros.perception.precomputed import read_mask_observation


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('scene', help='ScanNet-format sequence directory')
    parser.add_argument('masks', help='directory of precomputed masks (one file per frame stem)')
    parser.add_argument('--frames', type=int, default=300, help='frames to read (0 = all)')
    parser.add_argument('--every', type=int, default=1, help='read every n-th frame')
    parser.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    parser.add_argument('--profile', default='default', choices=('default', 'reference'))
    parser.add_argument('--descriptor', default=None, choices=('fpfh', 'fcgf', 'none'),
                        help="override the profile's descriptor")
    parser.add_argument('--eager-lifting', action='store_true',
                        help='lift with lift_masks on CUDA too (cuda_graph_lifting: false)')
    parser.add_argument('--timing', default='sync', choices=('sync', 'events'),
                        help='stage timing on CUDA: device syncs around each stage, or the '
                             "segmenter's own CUDA events")
    parser.add_argument('--passes', type=int, default=1,
                        help='feed the sequence this many times into the same map')
    parser.add_argument('--count-syncs', type=int, default=0, metavar='FRAMES',
                        help='CUDA: count host syncs per call over the first FRAMES frames')
    parser.add_argument('--json', default='bench_segmenter.json', help='output JSON path')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    overrides = {} if args.descriptor is None else {'descriptor': args.descriptor}
    if args.eager_lifting:
        overrides['cuda_graph_lifting'] = False
    config = segmenter_config(args.profile, overrides)
    sequence = ScanNetSequence(args.scene, every=args.every, max_frames=args.frames or None)
    segmenter = OnlineSegmenter(config, device=args.device)
    if args.timing == 'sync':
        segmenter.timer = StageTimer(segmenter.device, synchronize=True)
    device = segmenter.device
    calls = {'keyframe': [], 'frame': []}
    if args.passes > 1:
        calls.update({'keyframe, last pass': [], 'frame, last pass': []})
    start = time.perf_counter()
    keyframes = 0
    for repeat in range(args.passes):
        for frame, masks in _with_masks(sequence, args.masks):
            keyframes += masks is not None
            call_start = time.perf_counter()
            result = segmenter.integrate(frame, masks)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            if not result.merged:
                kind = 'keyframe' if masks is not None else 'frame'
                elapsed_ms = (time.perf_counter() - call_start) * 1e3
                calls[kind].append(elapsed_ms)
                if repeat == args.passes - 1 and args.passes > 1:
                    calls[f'{kind}, last pass'].append(elapsed_ms)
    exported = segmenter.labeled_points()
    wall_s = time.perf_counter() - start
    stages = segmenter.timer.summary()
    calls = {name: latency_summary(samples) for name, samples in calls.items() if samples}
    rows = list(stages.items()) + [(f'[{name}]', row) for name, row in calls.items()]
    width = max(len(name) for name, _ in rows) + 2
    print(f'{"stage":<{width}}{"count":>7}{"p50 ms":>10}{"p95 ms":>10}{"total s":>10}')
    for name, row in rows:
        print(f'{name:<{width}}{row["count"]:>7}{row["p50_ms"]:>10.1f}{row["p95_ms"]:>10.1f}'
              f'{row["total_ms"] / 1e3:>10.2f}')
    print(f'voxel-hash graphs: {segmenter.hash_graph_stats}; lifting graph: '
          f'{segmenter.lifting_stats}; back-projection graphs: '
          f'{segmenter.backproject_graph_stats}')
    print(f'{keyframes} keyframes, {segmenter.merge_rounds} merge rounds, '
          f'{segmenter.num_merged_masks} merged masks, {segmenter.num_voxels} voxels, '
          f'{exported.num_instances} instances, {wall_s:.1f} s total '
          f'(load average {os.getloadavg()[0]:.2f})')
    syncs = (count_syncs(config, device, _with_masks(sequence, args.masks, args.count_syncs))
             if args.count_syncs else {})
    if syncs:
        print('host syncs per call (median, max): ' + ', '.join(
            f'{name} {row["median"]:g}, {row["max"]}' for name, row in syncs.items()))
    report = {'device': args.device, 'profile': args.profile, 'descriptor': config.descriptor,
              'frames': len(sequence.frame_indices), 'keyframes': keyframes,
              'merge_rounds': segmenter.merge_rounds, 'wall_s': wall_s,
              'load_average': os.getloadavg()[0], 'timing': args.timing, 'stages': stages,
              'calls': calls, 'host_syncs': syncs,
              'summary': segmenter.summary()}
    temporary = args.json + '.tmp'
    with open(temporary, 'w') as handle:
        json.dump(report, handle, indent=2)
    os.replace(temporary, args.json)
    return 0


def _with_masks(sequence: ScanNetSequence, mask_dir: str, limit: Optional[int] = None
                ) -> Iterator[Tuple[object, Optional[object]]]:
    """Yield ``(frame, masks or None)`` for the first ``limit`` frames (None: all)."""
    stems = dict(zip(sequence.frame_indices, sequence.stems))
    for index, frame in enumerate(sequence):
        if limit is not None and index >= limit:
            return
        yield frame, read_mask_observation(mask_dir, stems[frame.frame_index])


def count_syncs(config, device: torch.device, frames) -> Dict[str, Dict[str, float]]:
    """Host syncs per ``integrate`` call of a fresh map over ``frames`` (CUDA, else {}).

    Calls are grouped as geometry-only frames, keyframes, and keyframes that ran a merge
    round. Returns ``{group: {median, max, calls}}``.
    """
    counter = HostSyncCounter(device)
    if not counter.enabled:
        return {}
    segmenter = OnlineSegmenter(config, device=str(device))
    groups: Dict[str, List[int]] = {'frame': [], 'keyframe': [], 'merge_keyframe': []}
    for frame, masks in frames:
        before = counter.count
        with counter.counting():
            result = segmenter.integrate(frame, masks)
        group = ('merge_keyframe' if result.merged else 'keyframe' if masks is not None
                 else 'frame')
        groups[group].append(counter.count - before)
    return {name: {'median': float(np.median(counts)), 'max': int(max(counts)),
                   'calls': len(counts)} for name, counts in groups.items() if counts}


if __name__ == '__main__':
    raise SystemExit(main())
