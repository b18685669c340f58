"""`onlineanyseg demo`: the embedded default, end to end, on CPU, without model weights."""

import argparse
import pathlib
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    parser = subparsers.add_parser(
        'demo', help='run the embedded default end to end (synthetic room, no weights)',
        description='Render a synthetic room with ground truth and print its statistics.')
    parser.add_argument('--out', default='demo_output', help='output folder')
    parser.add_argument('--frames', type=int, default=300, help='frames to render')
    parser.add_argument('--seed', type=int, default=0, help='scene seed')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `onlineanyseg demo`."""
    from onlineanyseg_ros.data.synthetic import SyntheticSceneConfig, write_synthetic_sequence

    out = pathlib.Path(args.out)
    started = time.perf_counter()
    scene_dir = out / 'scene0000_00'
    summary = write_synthetic_sequence(scene_dir, SyntheticSceneConfig(
        num_frames=args.frames, seed=args.seed))
    print(f'[demo] synthetic room: {summary.num_instances} GT instances, '
          f'{summary.num_frames} frames, {summary.num_gt_points} GT points, '
          f'{summary.frames_per_second:.1f} frames/s -> {scene_dir}')
    print(f'[demo] done in {time.perf_counter() - started:.1f} s')
    return 0
