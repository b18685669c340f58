"""Time ``lift_masks`` per keyframe on a recorded scene with precomputed masks.

Every ``--every``-th frame of a ScanNet-layout scene that has a label image under
``<masks>/mask/<stem>.png`` is back-projected once (``SegmenterConfig`` depth range, float32
as in the segmenter); then ``lift_masks`` runs ``--repeats`` times per keyframe after one
warm-up call, and the median wall time (CUDA-synchronized) per keyframe is reported, with
its median and maximum over the keyframes, and the accepted / dropped mask counts.

    onlineanyseg synth /tmp/h12/scene --frames 100
    onlineanyseg masks /tmp/h12/scene --backend simulated --out /tmp/h12/masks
    python benchmarks/bench_lifting.py /tmp/h12/scene /tmp/h12/masks
    python benchmarks/bench_lifting.py /tmp/h12/scene /tmp/h12/masks --device cuda

``--save FILE`` writes the lifted key sets (a ``torch.save`` dict) and ``--compare FILE``
reports, per keyframe, the Jaccard similarity of each mask's voxel set with a saved run
(e.g. before and after a change of the lifting code).
"""

import argparse
import json
import statistics

import torch

from onlineanyseg_ros.core.config import SegmenterConfig
from onlineanyseg_ros.core.geometry import backproject
from onlineanyseg_ros.core.lifting import lift_masks
from onlineanyseg_ros.core.profiling import median_seconds
from onlineanyseg_ros.data.scannet import ScanNetSequence
from onlineanyseg_ros.perception.precomputed import read_mask_observation


def load_keyframes(scene: str, masks: str, every: int, max_frames: int, device):
    """Return ``[(stem, points, valid, labels)]`` of the keyframes that have masks."""
    config = SegmenterConfig()
    sequence = ScanNetSequence(scene, every=every)
    keyframes = []
    for index, stem in enumerate(sequence.stems):
        observation = read_mask_observation(masks, stem)
        if observation is None:
            continue
        frame = sequence[index]
        points, valid = backproject(frame.depth, frame.K, frame.T_world_camera,
                                    config.depth_near_m, config.depth_far_m, device)
        labels = torch.from_numpy(observation.labels).to(device=device, dtype=torch.int64)
        keyframes.append((stem, points, valid, labels))
        if len(keyframes) >= max_frames:
            break
    return keyframes


def key_sets(frame) -> dict:
    """Return ``{label: set of voxel keys}`` of a ``LiftedFrame``."""
    keys = frame.mask_keys.cpu().tolist()
    offsets = frame.mask_offsets.tolist()
    return {label: set(keys[offsets[m]:offsets[m + 1]])
            for m, label in enumerate(frame.labels.tolist())}


def compare(saved: dict, results: dict) -> dict:
    """Summarise the agreement of two runs: equal label sets, mean / min voxel Jaccard."""
    equal_labels, jaccards = 0, []
    for stem, sets in results.items():
        before = saved.get(stem, {})
        equal_labels += set(before) == set(sets)
        for label in set(before) | set(sets):
            first, second = before.get(label, set()), sets.get(label, set())
            jaccards.append(len(first & second) / max(1, len(first | second)))
    return {'frames_with_equal_labels': equal_labels, 'frames': len(results),
            'mean_jaccard': statistics.fmean(jaccards) if jaccards else 1.0,
            'min_jaccard': min(jaccards, default=1.0)}


def main() -> None:
    """Parse the arguments, time every keyframe and print one JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('scene')
    parser.add_argument('masks')
    parser.add_argument('--every', type=int, default=10)
    parser.add_argument('--max-frames', type=int, default=30)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0 = keep)')
    parser.add_argument('--save')
    parser.add_argument('--compare')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = SegmenterConfig()
    keyframes = load_keyframes(args.scene, args.masks, args.every, args.max_frames, device)
    seconds, results, accepted, dropped = [], {}, 0, {}
    for stem, points, valid, labels in keyframes:
        seconds.append(median_seconds(lambda: lift_masks(points, valid, labels, config),
                                      device, warmup=1, repeats=args.repeats))
        frame = lift_masks(points, valid, labels, config)
        results[stem] = key_sets(frame)
        accepted += frame.num_masks
        for reason, count in frame.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    summary = {'device': str(device), 'threads': torch.get_num_threads(),
               'keyframes': len(keyframes),
               'median_ms': 1e3 * statistics.median(seconds) if seconds else None,
               'max_ms': 1e3 * max(seconds, default=0.0), 'total_s': sum(seconds),
               'accepted_masks': accepted, 'dropped': dropped}
    if args.save:
        torch.save(results, args.save)
    if args.compare:
        summary['agreement'] = compare(torch.load(args.compare), results)
    print(json.dumps(summary, indent=1))


if __name__ == '__main__':
    main()
