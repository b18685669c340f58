r"""Interleaved A/B timing of this checkout against an earlier revision, in one process.

Separate runs of a benchmark on a shared GPU host differ by up to 2x (the launch-bound
per-keyframe path follows the host CPU's speed and load), which hides changes of 10-30 %.
This script imports the package of ``--baseline-rev`` under another name
(``git archive`` into a temporary directory, ``onlineanyseg_ros`` renamed in its imports;
on a machine without git, ``--baseline-src`` names a directory holding the revision's
``onlineanyseg_ros``, e.g. from ``git archive REV onlineanyseg_ros | tar -x -C DIR``)
next to the current one, feeds both the same inputs, alternates which one goes first on
every keyframe, and reports both sides' medians from the same minutes of the same host.

- ``scale``: ``MaskGraph`` on the ``bench_scale.py`` stream (inserts and a merge round
  every 5 keyframes), and a check that both ends with the same merged masks;
- ``segmenter``: ``OnlineSegmenter`` per stage and per whole keyframe call without a
  merge round (``[keyframe]``) on a ScanNet-format sequence with precomputed masks (as
  ``bench_segmenter.py``), descriptor 'none'. ``--timing sync`` (default) synchronizes
  the device around every stage on both sides; ``--timing events`` times stages by CUDA
  events, which leaves work that overlaps stages (streams) overlapping, so that the
  whole keyframe calls compare the code as it runs in the node;
- ``lifting``: ``lifting_graph.GraphLifter`` per keyframe (``bench_lifting.py``'s frames,
  ``--target-masks`` as there), ``--passes`` timed passes over the keyframes after one
  untimed pass (capacity growth and capture), and how many calls gave equal outputs.

    PYTHONPATH=. python benchmarks/bench_ab.py scale --baseline-rev cd7f808 --device cuda
    PYTHONPATH=. python benchmarks/bench_ab.py segmenter --scene /tmp/s --masks /tmp/m \\
        --baseline-rev cd7f808 --device cuda
    PYTHONPATH=. python benchmarks/bench_ab.py lifting --scene /tmp/s --masks /tmp/m \
        --baseline-rev 476dfc2 --device cuda --target-masks 50
"""

import argparse
import functools
import importlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional

import bench_scale
import numpy as np
import torch
from tqdm import tqdm

PACKAGE = 'onlineanyseg_ros'
BASELINE_PACKAGE = 'onlineanyseg_ros_baseline'


def import_baseline(revision: Optional[str], source: Optional[str], workdir: str):
    """Copy the baseline package into ``workdir`` as ``BASELINE_PACKAGE``; make it importable.

    The package comes from ``git archive revision`` or, without a revision, from the
    directory ``source`` (which holds ``onlineanyseg_ros/``).
    """
    root = pathlib.Path(workdir)
    if revision is not None:
        archive = subprocess.run(['git', 'archive', revision, PACKAGE], check=True,
                                 capture_output=True).stdout
        subprocess.run(['tar', '-x', '-C', str(root)], input=archive, check=True)
        (root / PACKAGE).rename(root / BASELINE_PACKAGE)
    else:
        shutil.copytree(pathlib.Path(source) / PACKAGE, root / BASELINE_PACKAGE)
    pattern = re.compile(rf'\b{PACKAGE}\b')
    for path in (root / BASELINE_PACKAGE).rglob('*.py'):
        path.write_text(pattern.sub(BASELINE_PACKAGE, path.read_text()))
    sys.path.insert(0, str(root))
    return lambda module: importlib.import_module(f'{BASELINE_PACKAGE}.{module}')


def _orders(index: int):
    """Alternate which side runs first."""
    return ('current', 'baseline') if index % 2 else ('baseline', 'current')


def run_scale(args, baseline) -> None:
    """Interleave both mask graphs on the bench_scale stream; print their medians."""
    from onlineanyseg_ros.core.config import SegmenterConfig
    from onlineanyseg_ros.core.mask_graph import MaskGraph
    device = torch.device(args.device)
    stream = bench_scale.parse_args(['--keyframes', str(args.keyframes), '--baseline', 'none'])
    world = bench_scale.SyntheticWorld(stream)
    graphs = {'current': MaskGraph(SegmenterConfig(descriptor='none'), device),
              'baseline': baseline('core.mask_graph').MaskGraph(
                  baseline('core.config').SegmenterConfig(descriptor='none'), device)}
    insert_ms = {name: [] for name in graphs}
    merge_ms = {name: [] for name in graphs}
    seen = torch.zeros(world.num_slots, dtype=torch.bool, device=device)
    for frame in tqdm(range(args.keyframes), desc='keyframes', unit='kf'):
        keyframe = bench_scale._to_device(world.keyframe(frame), device)
        for name in _orders(frame):
            insert = functools.partial(graphs[name].insert_frame, num_slots=world.num_slots)
            insert_ms[name].append(bench_scale._timed(
                device, insert, keyframe['observed_slots'], keyframe['mask_slots'],
                keyframe['mask_offsets'], keyframe['features'], keyframe['scores'])[0])
        seen[keyframe['observed_slots']] = True
        if (frame + 1) % 5 == 0:
            point_slots = torch.nonzero(seen).squeeze(1)
            for name in _orders(frame // 5):
                merge_ms[name].append(bench_scale._timed(device, graphs[name].merge_round,
                                                         point_slots, None)[0])
    same = torch.equal(graphs['current'].merged_of_raw.cpu(),
                       graphs['baseline'].merged_of_raw.cpu())
    print(f'same merged masks on both sides: {same} ({graphs["current"].num_merged})')
    window = min(100, args.keyframes)
    for name in graphs:
        inserts, merges = np.array(insert_ms[name]), np.array(merge_ms[name])
        print(f'{name:<9} insert p50 first/last {window}: {np.median(inserts[:window]):.2f} / '
              f'{np.median(inserts[-window:]):.2f} ms, all p50/p95 {np.median(inserts):.2f} / '
              f'{np.percentile(inserts, 95):.2f} ms; merge round p50/p95 '
              f'{np.median(merges):.2f} / {np.percentile(merges, 95):.2f} ms '
              f'({len(merges)} rounds)')


def run_segmenter(args, baseline) -> None:
    """Interleave both segmenters frame by frame; print their per-stage medians."""
    from onlineanyseg_ros.core.config import segmenter_config
    from onlineanyseg_ros.core.profiling import latency_summary, StageTimer
    from onlineanyseg_ros.core.segmenter import OnlineSegmenter
    from onlineanyseg_ros.data.scannet import ScanNetSequence
    from onlineanyseg_ros.perception.precomputed import read_mask_observation
    sequence = ScanNetSequence(args.scene, max_frames=args.frames or None)
    stems = dict(zip(sequence.frame_indices, sequence.stems))
    overrides = {'descriptor': 'none'}
    segmenters = {
        'current': OnlineSegmenter(segmenter_config('default', overrides), device=args.device),
        'baseline': baseline('core.segmenter').OnlineSegmenter(
            baseline('core.config').segmenter_config('default', overrides),
            device=args.device)}
    device = torch.device(args.device)
    # Stages timed the same way on both sides.
    synchronize = args.timing == 'sync'
    segmenters['current'].timer = StageTimer(device, synchronize=synchronize)
    segmenters['baseline'].timer = baseline('core.profiling').StageTimer(
        device, synchronize=synchronize)
    keyframe_ms = {name: [] for name in segmenters}
    for index, frame in enumerate(tqdm(sequence, desc='frames', unit='frame')):
        masks = read_mask_observation(args.masks, stems[frame.frame_index])
        for name in _orders(index):
            start = time.perf_counter()
            merged = segmenters[name].integrate(frame, masks).merged
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            if masks is not None and not merged:
                keyframe_ms[name].append((time.perf_counter() - start) * 1e3)
    summaries = {name: segmenter.timer.summary() for name, segmenter in segmenters.items()}
    for name, samples in keyframe_ms.items():
        summaries[name]['[keyframe]'] = latency_summary(samples)
    print(f'{"stage":<12}{"current p50 / p95 ms":>24}{"baseline p50 / p95 ms":>24}')
    for stage, row in summaries['current'].items():
        other = summaries['baseline'].get(stage)
        if other:
            print(f'{stage:<12}{row["p50_ms"]:>13.2f} / {row["p95_ms"]:<8.1f}'
                  f'{other["p50_ms"]:>13.2f} / {other["p95_ms"]:<8.1f}')
    print('merged masks: ' + ', '.join(f'{name} {segmenter.num_merged_masks}'
                                       for name, segmenter in segmenters.items()))


def run_lifting(args, baseline) -> None:
    """Interleave both ``GraphLifter``s keyframe by keyframe; print medians and equality."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import bench_lifting
    from onlineanyseg_ros.core.config import SegmenterConfig
    from onlineanyseg_ros.core.lifting_graph import GraphLifter
    device = torch.device(args.device)
    keyframes = bench_lifting.load_keyframes(args.scene, args.masks, 1, args.frames or 10**9,
                                             device)
    if args.target_masks:
        keyframes = [(stem, points, valid, bench_lifting.oversegment(labels, args.target_masks,
                                                                     400))
                     for stem, points, valid, labels in keyframes]
    lifters = {'current': GraphLifter(SegmenterConfig(), device),
               'baseline': baseline('core.lifting_graph').GraphLifter(
                   baseline('core.config').SegmenterConfig(), device)}
    samples = {name: [] for name in lifters}
    equal = frames = 0
    # The first pass grows the capacities and captures the graphs: not timed.
    for repeat in tqdm(range(args.passes + 1), desc='passes', unit='pass'):
        for index, (_, points, valid, labels) in enumerate(keyframes):
            lifted = {}
            for name in _orders(index):
                if device.type == 'cuda':
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                lifted[name] = lifters[name](points, valid, labels)
                if device.type == 'cuda':
                    torch.cuda.synchronize(device)
                if repeat:
                    samples[name].append((time.perf_counter() - start) * 1e3)
            frames += 1
            equal += all(torch.equal(getattr(lifted['current'], field),
                                     getattr(lifted['baseline'], field))
                         for field in ('labels', 'observed_keys', 'mask_keys', 'mask_offsets'))
    for name, lifter in lifters.items():
        print(f'{name:<9} p50 {np.median(samples[name]):7.2f} ms  p95 '
              f'{np.percentile(samples[name], 95):7.2f} ms  {lifter.stats}  {lifter.capacities}')
    print(f'equal outputs: {equal} / {frames} keyframe calls')


def main(argv=None) -> int:
    """Run the chosen comparison; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('mode', choices=('scale', 'segmenter', 'lifting'))
    baseline = parser.add_mutually_exclusive_group(required=True)
    baseline.add_argument('--baseline-rev', help='git revision to compare with')
    baseline.add_argument('--baseline-src', help="directory holding the baseline's "
                                                 f'{PACKAGE}/ (no git needed)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--keyframes', type=int, default=1500, help='scale: stream length')
    parser.add_argument('--scene', help='segmenter: ScanNet-format sequence directory')
    parser.add_argument('--masks', help='segmenter: precomputed mask directory')
    parser.add_argument('--frames', type=int, default=300, help='segmenter: frames (0 = all)')
    parser.add_argument('--target-masks', type=int, default=0,
                        help='lifting: split every label image into about N masks')
    parser.add_argument('--passes', type=int, default=3,
                        help='lifting: timed passes over the keyframes (after one untimed)')
    parser.add_argument('--timing', choices=('sync', 'events'), default='sync',
                        help='segmenter: how stages are timed (see above)')
    args = parser.parse_args(argv)
    if args.mode in ('segmenter', 'lifting') and not (args.scene and args.masks):
        parser.error(f'{args.mode} needs --scene and --masks')
    with tempfile.TemporaryDirectory() as workdir:
        baseline = import_baseline(args.baseline_rev, args.baseline_src, workdir)
        {'scale': run_scale, 'segmenter': run_segmenter,
         'lifting': run_lifting}[args.mode](args, baseline)
    return 0


if __name__ == '__main__':
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    raise SystemExit(main())
