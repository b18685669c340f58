"""`onlineanyseg synth`: render a synthetic room with ground truth in the ScanNet layout."""

import argparse
import sys


def register(subparsers) -> None:
    """Add the ``synth`` subcommand."""
    parser = subparsers.add_parser(
        'synth', help='render a synthetic RGB-D room with ground truth',
        description='Render a procedural room (floor, walls, >= 8 objects) seen by a camera '
                    'loop, in the ScanNet export layout plus GT instance images, GT points '
                    'and labels.')
    parser.add_argument('out_dir', help='output folder; its name is the scene name')
    parser.add_argument('--frames', type=int, default=300, help='number of frames')
    parser.add_argument('--seed', type=int, default=0, help='layout and noise seed')
    parser.add_argument('--width', type=int, default=640, help='image width, pixels')
    parser.add_argument('--height', type=int, default=480, help='image height, pixels')
    parser.add_argument('--depth-noise', type=float, default=0.002, metavar='M',
                        help='depth noise std at 1 m, metres (grows with depth squared)')
    parser.add_argument('--holes', type=float, default=0.0, metavar='F',
                        help='share of pixels without depth')
    parser.add_argument('--pose-jitter', type=float, default=0.0, metavar='M',
                        help='per-frame camera position shake std, metres')
    parser.add_argument('--objects', type=int, default=10, help='objects besides the room')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the sequence and print its statistics."""
    from onlineanyseg_ros.data.synthetic import SyntheticSceneConfig, write_synthetic_sequence

    try:
        # Focal length scales with the width so a smaller image keeps the field of view.
        config = SyntheticSceneConfig(
            num_frames=args.frames, seed=args.seed, width=args.width, height=args.height,
            focal_px=525.0 * args.width / 640.0, depth_noise_std_m=args.depth_noise,
            hole_fraction=args.holes, pose_jitter_m=args.pose_jitter, num_objects=args.objects)
    except ValueError as error:
        print(f'onlineanyseg synth: {error}', file=sys.stderr)
        return 2
    summary = write_synthetic_sequence(args.out_dir, config)
    print(f'scene {summary.scene_name}: {summary.num_instances} instances '
          f'(floor, 4 walls, {summary.num_instances - 5} objects), {summary.num_frames} '
          f'frames of {config.width}x{config.height}, {summary.num_gt_points} GT points')
    print(f'rendered and written in {summary.seconds:.1f} s '
          f'({summary.frames_per_second:.1f} frames/s) to {summary.out_dir}')
    return 0
