"""`onlineanyseg run`: segment a ScanNet-format sequence offline with precomputed masks."""

import argparse
import logging
import pathlib
import time

LOG = logging.getLogger('onlineanyseg.run')


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `run` subcommand."""
    parser = subparsers.add_parser(
        'run', help='segment a sequence with precomputed masks, write instances.{ply,npz}',
        description='Integrate every --every-th frame of SEQ_DIR; frames with a mask file in '
                    'MASK_DIR are inserted as mask frames, the others are geometry only.')
    parser.add_argument('sequence', metavar='SEQ_DIR', help='ScanNet-format sequence folder')
    parser.add_argument('--masks', required=True, metavar='MASK_DIR',
                        help='precomputed masks (mask/<stem>.png, mask_embeddings/, ...)')
    parser.add_argument('--out', required=True, metavar='OUT_DIR', help='output folder')
    parser.add_argument('--config', metavar='YAML', help='SegmenterConfig overrides (flat '
                        'mapping or the segmentation node parameter file)')
    parser.add_argument('--profile', choices=('default', 'reference', 'greedy_baseline'),
                        default='default',
                        help='method profile the overrides apply to (default: %(default)s; '
                             'greedy_baseline = greedy voxel-overlap merging of the same '
                             'masks)')
    parser.add_argument('--device', default='cpu', help='torch device (default: %(default)s)')
    parser.add_argument('--every', type=int, default=10,
                        help="integrate every N-th frame (default: %(default)s, the method's "
                             'keyframe interval)')
    parser.add_argument('--max-frames', type=int, default=None,
                        help='stop after this many source frames')
    parser.add_argument('--no-semantic', action='store_true',
                        help='ignore mask embeddings (semantic term off)')
    parser.set_defaults(func=run)


def run_sequence(sequence_dir, mask_dir, out_dir, config, device='cpu', every=10,
                 max_frames=None, use_features=True, progress=True):
    """Segment one sequence and save its map; return the summary dict."""
    from tqdm import tqdm

    from onlineanyseg_ros.core.segmenter import OnlineSegmenter
    from onlineanyseg_ros.core.types import MaskObservation
    from onlineanyseg_ros.data.scannet import ScanNetSequence
    from onlineanyseg_ros.perception.precomputed import read_mask_observation

    sequence = ScanNetSequence(sequence_dir, every=every, max_frames=max_frames)
    segmenter = OnlineSegmenter(config, device)
    stem_of_frame = dict(zip(sequence.frame_indices, sequence.stems))
    started = time.perf_counter()
    inserted = 0
    for frame in tqdm(sequence, desc='frames', unit='frame', disable=not progress):
        stem = stem_of_frame[frame.frame_index]
        masks = read_mask_observation(mask_dir, stem)
        if masks is not None and not use_features:
            masks = MaskObservation(masks.labels, None, masks.scores)
        result = segmenter.integrate(frame, masks)
        inserted += result.masks_inserted
    elapsed = time.perf_counter() - started
    summary = segmenter.summary()
    summary.update({'sequence': str(sequence_dir), 'masks': str(mask_dir),
                    'frames': len(sequence), 'skipped_poses': sequence.skipped_poses,
                    'masks_inserted': inserted, 'wall_time_s': elapsed})
    segmenter.save(out_dir)
    return summary


def run(args: argparse.Namespace) -> int:
    """Entry point of `onlineanyseg run`."""
    from onlineanyseg_ros.core.config import segmenter_config, segmenter_overrides_from_yaml

    overrides = segmenter_overrides_from_yaml(args.config) if args.config else {}
    config = segmenter_config(args.profile, overrides)
    summary = run_sequence(args.sequence, args.masks, args.out, config, args.device,
                           args.every, args.max_frames, not args.no_semantic)
    out = pathlib.Path(args.out)
    exported = summary.get('merged_masks', 0)
    print(f'{summary["frames"]} frames, {summary["mask_insertions"]} mask frames, '
          f'{summary["merge_rounds"]} merge rounds, {exported} merged masks, '
          f'{summary["wall_time_s"]:.1f} s -> {out / "instances.npz"}')
    return 0
