"""`onlineanyseg bag`: write a ScanNet-format RGB-D sequence as a rosbag2 bag."""

import argparse
import logging
from pathlib import Path

LOGGER = logging.getLogger(__name__)
SCANNET_RATE_HZ = 30.0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bag` subcommand."""
    parser = subparsers.add_parser(
        'bag', help='write a ScanNet-format sequence as a rosbag2 bag (mcap or sqlite3)',
        description='Writes colour (rgb8), depth (16UC1 mm), both camera_infos, /tf, '
                    '/tf_static and /camera/pose per frame; with --masks also the keyframe '
                    'bundle (keyframe/color, depth, camera_info, pose, masks, mask_features) '
                    'for the frames that have precomputed masks, so the segmentation node can '
                    'be replayed alone.')
    parser.add_argument('seq_dir', type=Path, metavar='SEQ_DIR',
                        help='sequence folder holding color/ depth/ pose/ intrinsic/')
    parser.add_argument('out', type=Path, metavar='OUT', help='bag directory to create')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap',
                        help='rosbag2 storage plugin (default: %(default)s)')
    parser.add_argument('--every', type=int, default=1, metavar='N',
                        help='keep every N-th frame (default: %(default)s)')
    parser.add_argument('--max-frames', type=int, metavar='N',
                        help='stop after N kept frames')
    parser.add_argument('--masks', type=Path, metavar='MASK_DIR',
                        help='precomputed masks (mask/<stem>.png, mask_embeddings/<stem>.npy)')
    parser.add_argument('--rate', type=float, metavar='HZ',
                        help='stamp rate of the kept frames (default: 30 / every, the '
                             'ScanNet capture timing)')
    parser.add_argument('--world-frame', default='map', help='pose parent frame')
    parser.add_argument('--camera-frame', default='camera_color_optical_frame',
                        help='optical frame of colour and registered depth')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    parser.set_defaults(func=run_bag)


def run_bag(args: argparse.Namespace) -> int:
    """Write the bag, print its summary; return the exit code."""
    from onlineanyseg_ros.data.bag import BagLayout, write_sequence_bag
    from onlineanyseg_ros.data.scannet import ScanNetSequence

    if args.every < 1:
        LOGGER.error('--every must be >= 1, got %d', args.every)
        return 2
    try:
        layout = BagLayout(rate_hz=args.rate or SCANNET_RATE_HZ / args.every,
                           world_frame=args.world_frame, camera_frame=args.camera_frame)
        sequence = ScanNetSequence(args.seq_dir, every=args.every, max_frames=args.max_frames)
        keyframe_masks = None
        if args.masks is not None:
            # Stems belong to the kept frames; frames carry their source index.
            keyframe_masks = _mask_lookup(
                args.masks, dict(zip(sequence.frame_indices, sequence.stems)))
        summary = write_sequence_bag(sequence, args.out, storage=args.storage, layout=layout,
                                     keyframe_masks=keyframe_masks,
                                     progress=not args.no_progress)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        LOGGER.error('%s', error)
        return 1
    # The reader already dropped frames whose pose file is broken: report both counts.
    summary['dropped_invalid_pose'] += int(getattr(sequence, 'skipped_poses', 0))
    _print_summary(summary)
    return 0


def _mask_lookup(mask_dir: Path, stem_of_index: dict):
    """Return frame -> MaskObservation or None (frames without a mask file are no keyframes).

    ``stem_of_index`` maps a frame's source index (``frame.frame_index``) to its colour stem.
    """
    from onlineanyseg_ros.perception.precomputed import read_mask_observation

    if not mask_dir.is_dir():
        raise FileNotFoundError(f'mask directory {mask_dir} does not exist')

    def lookup(frame):
        return read_mask_observation(mask_dir, stem_of_index[frame.frame_index])
    return lookup


def _print_summary(summary: dict) -> None:
    print(f'wrote {summary["path"]} ({summary["storage"]}, '
          f'{summary["size_bytes"] / 2 ** 20:.1f} MiB) in {summary["elapsed_s"]:.1f} s')
    print(f'frames: {summary["frames_written"]} written, {summary["keyframes"]} keyframes, '
          f'{summary["dropped_invalid_pose"]} dropped (invalid pose); '
          f'{summary["messages"]} messages over {summary["duration_s"]:.2f} s')
    for topic, count in summary['topics'].items():
        print(f'  {topic}: {count}')
