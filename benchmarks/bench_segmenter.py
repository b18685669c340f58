"""Per-keyframe latency of the segmentation core by stage, on a ScanNet-format sequence.

Feeds every frame of a sequence (e.g. ``onlineanyseg synth`` output) to ``OnlineSegmenter``
with precomputed masks (e.g. the simulated masks of ``onlineanyseg masks``) on the frames
that have them, then exports once. Prints p50/p95/total per stage of the segmenter's
``StageTimer`` (backproject, surface, lift, insert, merge, descriptor, export) and writes the
same numbers as JSON.

    python benchmarks/bench_segmenter.py SCENE_DIR MASK_DIR --frames 300 --device cpu
"""

import argparse
import json
import os
import time

from onlineanyseg_ros.core.config import segmenter_config
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
    stems = dict(zip(sequence.frame_indices, sequence.stems))
    segmenter = OnlineSegmenter(config, device=args.device)
    start = time.perf_counter()
    keyframes = 0
    for frame in sequence:
        masks = read_mask_observation(args.masks, stems[frame.frame_index])  # None: no masks
        keyframes += masks is not None
        segmenter.integrate(frame, masks)
    exported = segmenter.labeled_points()
    wall_s = time.perf_counter() - start
    stages = segmenter.timer.summary()
    print(f'{"stage":<12}{"count":>7}{"p50 ms":>10}{"p95 ms":>10}{"total s":>10}')
    for name, row in stages.items():
        print(f'{name:<12}{row["count"]:>7}{row["p50_ms"]:>10.1f}{row["p95_ms"]:>10.1f}'
              f'{row["total_ms"] / 1e3:>10.2f}')
    print(f'{keyframes} keyframes, {segmenter.merge_rounds} merge rounds, '
          f'{segmenter.num_merged_masks} merged masks, {segmenter.num_voxels} voxels, '
          f'{exported.num_instances} instances, {wall_s:.1f} s total '
          f'(load average {os.getloadavg()[0]:.2f})')
    report = {'device': args.device, 'profile': args.profile, 'descriptor': config.descriptor,
              'frames': len(sequence.frame_indices), 'keyframes': keyframes,
              'merge_rounds': segmenter.merge_rounds, 'wall_s': wall_s,
              'load_average': os.getloadavg()[0], 'stages': stages,
              'summary': segmenter.summary()}
    temporary = args.json + '.tmp'
    with open(temporary, 'w') as handle:
        json.dump(report, handle, indent=2)
    os.replace(temporary, args.json)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
