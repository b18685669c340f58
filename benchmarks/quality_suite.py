"""Quality on the synthetic suite: the method (default, reference) vs the greedy baseline.

For each seed: render a synthetic room, simulate masks (default noise suite or noise-free),
segment it with every profile on identical masks, and score class-agnostic AP/AP50/AP25
against the scene's ground truth. Prints one table, writes JSON.

    PYTHONPATH=. .venv/bin/python benchmarks/quality_suite.py --out /tmp/quality \
        --seeds 0 1 2 [--noise default|none] [--frames 300]
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

PROFILES = ('default', 'reference', 'greedy_baseline')


def _scene(out: pathlib.Path, seed: int, frames: int) -> pathlib.Path:
    from onlineanyseg_ros.data.synthetic import SyntheticSceneConfig, write_synthetic_sequence
    scene_dir = out / f'scene{seed:04d}_00'
    if not (scene_dir / 'meta.json').exists():
        write_synthetic_sequence(scene_dir, SyntheticSceneConfig(num_frames=frames, seed=seed))
    return scene_dir


def _masks(scene_dir: pathlib.Path, noise: str, seed: int, every: int) -> pathlib.Path:
    from onlineanyseg_ros.data.scannet import ScanNetSequence
    from onlineanyseg_ros.perception.precomputed import write_mask_observation
    from onlineanyseg_ros.perception.simulated import (
        noise_free_config, SimulatedMaskConfig, SimulatedMaskGenerator)
    mask_dir = scene_dir.parent / f'{scene_dir.name}_masks_{noise}'
    if (mask_dir / 'done').exists():
        return mask_dir
    sequence = ScanNetSequence(scene_dir, every=every)
    meta = json.loads((scene_dir / 'meta.json').read_text())
    categories = {row['instance_id']: row['class_id'] for row in meta['instances']}
    config = noise_free_config() if noise == 'none' else SimulatedMaskConfig()
    position_of = {index: position for position, index in enumerate(sequence.frame_indices)}
    generator = SimulatedMaskGenerator(
        lambda frame_index: sequence.instance_image(position_of[frame_index]), categories,
        config, seed)
    for position, frame in enumerate(sequence):
        write_mask_observation(mask_dir, sequence.stems[position], generator.generate(frame))
    (mask_dir / 'done').write_text('')
    return mask_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='work folder (scenes are cached there)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--frames', type=int, default=300)
    parser.add_argument('--every', type=int, default=10)
    parser.add_argument('--noise', choices=('default', 'none'), default='default')
    parser.add_argument('--profiles', nargs='+', default=list(PROFILES))
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)

    from onlineanyseg_ros.commands.run import run_sequence
    from onlineanyseg_ros.core.config import segmenter_config
    from onlineanyseg_ros.eval.ap import average_precision, evaluate_paths

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {profile: {'scenes': [], 'seconds': []} for profile in args.profiles}
    for seed in args.seeds:
        scene_dir = _scene(out, seed, args.frames)
        mask_dir = _masks(scene_dir, args.noise, seed, args.every)
        for profile in args.profiles:
            pred_dir = out / f'{scene_dir.name}_{args.noise}_{profile}'
            started = time.perf_counter()
            run_sequence(scene_dir, mask_dir, pred_dir, segmenter_config(profile), args.device,
                         args.every, progress=False)
            results[profile]['seconds'].append(time.perf_counter() - started)
            results[profile]['scenes'].append(evaluate_paths(
                pred_dir, scene_dir / f'{scene_dir.name}_vh_clean_2.ply',
                scene_dir / f'{scene_dir.name}.txt', name=scene_dir.name))
            print(f'seed {seed} {profile}: {average_precision(results[profile]["scenes"][-1:])}',
                  file=sys.stderr)
    report = {}
    print(f'noise={args.noise} seeds={args.seeds} frames={args.frames}')
    print(f'{"profile":<16} {"AP":>6} {"AP50":>6} {"AP25":>6} {"run s (median)":>15}')
    for profile, result in results.items():
        metrics = average_precision(result['scenes'])
        seconds = float(np.median(result['seconds']))
        report[profile] = {'ap': metrics['ap'], 'ap50': metrics['ap50'],
                           'ap25': metrics['ap25'], 'median_run_s': seconds}
        print(f'{profile:<16} {metrics["ap"]:6.3f} {metrics["ap50"]:6.3f} '
              f'{metrics["ap25"]:6.3f} {seconds:15.1f}')
    (out / f'quality_{args.noise}.json').write_text(json.dumps(report, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
