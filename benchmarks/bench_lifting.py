"""Time ``lift_masks`` per keyframe on a recorded scene with precomputed masks.

Every ``--every``-th frame of a ScanNet-layout scene that has a label image under
``<masks>/mask/<stem>.png`` is back-projected once (``SegmenterConfig`` depth range, float32
as in the segmenter); then ``lift_masks`` runs ``--repeats`` times per keyframe after one
warm-up call, and the median wall time (CUDA-synchronized) per keyframe is reported, with
its median and maximum over the keyframes, the mean number of masks given and accepted per
keyframe, the dropped mask counts and, on CUDA, the host syncs per keyframe (counted on one
more, untimed call per keyframe).

The simulated masks of a synthetic room give about 9 masks per keyframe; a class-agnostic
segmenter such as CropFormer over-segments and gives several times more. ``--target-masks
N`` splits every label image into about ``N`` masks (``oversegment``) to time lifting at
that load:

    onlineanyseg synth /tmp/h12/scene --frames 100
    onlineanyseg masks /tmp/h12/scene --backend simulated --out /tmp/h12/masks
    python benchmarks/bench_lifting.py /tmp/h12/scene /tmp/h12/masks
    python benchmarks/bench_lifting.py /tmp/h12/scene /tmp/h12/masks --device cuda
    python benchmarks/bench_lifting.py /tmp/h12/scene /tmp/h12/masks --device cuda \
        --target-masks 50

``--graph`` times ``lifting_graph.GraphLifter`` instead of ``lift_masks`` (on CUDA: one CUDA
graph replay and one host sync per keyframe, capacities grown on the first keyframes, which
the warm-up call absorbs) and reports its capture, regrowth and fallback counts.

(``synth`` renders 640x480 by default; ``masks`` labels every 10th frame, so the scene above
has 10 keyframes.) ``--save FILE`` writes the lifted key sets (a ``torch.save`` dict) and
``--compare FILE`` reports, per keyframe, the Jaccard similarity of each mask's voxel set
with a saved run (e.g. before and after a change of the lifting code; use the same
``--target-masks`` for both).
"""

import argparse
import json
import math
import statistics

import torch

from onlineanyseg_ros.core.config import SegmenterConfig
from onlineanyseg_ros.core.geometry import backproject
from onlineanyseg_ros.core.lifting import lift_masks
from onlineanyseg_ros.core.lifting_graph import GraphLifter
from onlineanyseg_ros.core.profiling import HostSyncCounter, median_seconds
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


def grid_pieces(labels: torch.Tensor, cell_pixels: int) -> torch.Tensor:
    """Return int64 ``(H, W)`` piece codes: masks split by a square grid (-1 = no mask)."""
    height, width = labels.shape
    cells_across = -(-width // cell_pixels)
    cells_down = -(-height // cell_pixels)
    rows = torch.arange(height, device=labels.device)[:, None] // cell_pixels
    columns = torch.arange(width, device=labels.device)[None, :] // cell_pixels
    codes = (labels * cells_down + rows) * cells_across + columns
    return torch.where(labels > 0, codes, -1)


def count_pieces(labels: torch.Tensor, cell_pixels: int, min_piece_pixels: int) -> int:
    """Count the grid pieces of ``labels`` with at least ``min_piece_pixels`` pixels."""
    codes = grid_pieces(labels, cell_pixels)
    _, sizes = torch.unique(codes[codes >= 0], return_counts=True)
    return int((sizes >= min_piece_pixels).sum())


def oversegment(labels: torch.Tensor, target_masks: int, min_piece_pixels: int
                ) -> torch.Tensor:
    """Split every mask of a label image by a pixel grid into about ``target_masks`` masks.

    Mimics the over-segmentation of a class-agnostic segmenter: each mask is cut by one
    regular square grid, pieces of fewer than ``min_piece_pixels`` pixels are dropped (set
    to 0) and the rest are relabelled ``1..K`` in code order. The cell size is chosen per
    image. Cells smaller than ``min_piece_pixels`` hold no piece, so the search starts at
    the smallest cell that does; from there the piece count falls (nearly monotonically) as
    cells grow, and a bisection finds the two neighbouring sizes around ``target_masks``, of
    which the one with the closer count is taken. The count is capped at both ends: the
    smallest cell when even it gives fewer pieces, one cell (masks unsplit) when the image
    already holds more.

    Args:
        labels: int64 ``(H, W)`` mask ids, 0 = none.
        target_masks: wanted number of masks (>= 1).
        min_piece_pixels: smallest piece kept (pixels).

    Returns:
        int64 ``(H, W)`` labels ``0..K``, ``K`` about ``target_masks``.

    """
    small, large = math.isqrt(max(0, min_piece_pixels - 1)) + 1, max(labels.shape)
    while large - small > 1:
        middle = (small + large) // 2
        if count_pieces(labels, middle, min_piece_pixels) > target_masks:
            small = middle
        else:
            large = middle
    cell_pixels = min((small, large), key=lambda size: abs(
        count_pieces(labels, size, min_piece_pixels) - target_masks))
    codes = grid_pieces(labels, cell_pixels)
    piece_codes, piece_of_pixel, sizes = torch.unique(codes, return_inverse=True,
                                                      return_counts=True)
    kept = (piece_codes >= 0) & (sizes >= min_piece_pixels)
    new_label = torch.where(kept, torch.cumsum(kept, 0), 0)
    return new_label[piece_of_pixel]


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
    parser.add_argument('--target-masks', type=int, default=0,
                        help='over-segment every label image to about N masks (0 = off)')
    parser.add_argument('--min-piece-pixels', type=int, default=400,
                        help='smallest piece kept by --target-masks (pixels)')
    parser.add_argument('--graph', action='store_true',
                        help='time lifting_graph.GraphLifter instead of lift_masks')
    parser.add_argument('--save')
    parser.add_argument('--compare')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = SegmenterConfig()
    keyframes = load_keyframes(args.scene, args.masks, args.every, args.max_frames, device)
    if args.target_masks > 0:
        keyframes = [(stem, points, valid,
                      oversegment(labels, args.target_masks, args.min_piece_pixels))
                     for stem, points, valid, labels in keyframes]
    lifter = GraphLifter(config, device) if args.graph else None

    def lift(points, valid, labels):
        if lifter is not None:
            return lifter(points, valid, labels)
        return lift_masks(points, valid, labels, config)

    seconds, results, given, accepted, dropped = [], {}, 0, 0, {}
    syncs = HostSyncCounter(device)
    for stem, points, valid, labels in keyframes:
        given += int(torch.unique(labels[labels > 0]).numel())
        seconds.append(median_seconds(lambda: lift(points, valid, labels),
                                      device, warmup=1, repeats=args.repeats))
        with syncs.counting():  # an untimed call: counting slows the syncs
            frame = lift(points, valid, labels)
        results[stem] = key_sets(frame)
        accepted += frame.num_masks
        for reason, count in frame.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    summary = {'device': str(device), 'lifter': 'graph' if args.graph else 'eager',
               'threads': torch.get_num_threads(),
               'keyframes': len(keyframes),
               'median_ms': 1e3 * statistics.median(seconds) if seconds else None,
               'max_ms': 1e3 * max(seconds, default=0.0), 'total_s': sum(seconds),
               'masks_per_keyframe': given / max(1, len(keyframes)),
               'accepted_per_keyframe': accepted / max(1, len(keyframes)),
               'accepted_masks': accepted, 'dropped': dropped,
               'host_syncs_per_keyframe': (syncs.count / max(1, len(keyframes))
                                           if syncs.enabled else None)}
    if lifter is not None:
        summary['graph_lifter'] = {**lifter.stats, 'capacities': lifter.capacities._asdict()}
    if args.save:
        torch.save(results, args.save)
    if args.compare:
        summary['agreement'] = compare(torch.load(args.compare), results)
    print(json.dumps(summary, indent=1))


if __name__ == '__main__':
    main()
