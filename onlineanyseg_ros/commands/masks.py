"""`onlineanyseg masks`: precompute 2D masks (and CLIP features) for a sequence."""

import argparse
import json
import logging
import pathlib
import time

LOG = logging.getLogger('onlineanyseg.masks')


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `masks` subcommand."""
    parser = subparsers.add_parser(
        'masks', help='compute 2D masks of every N-th frame into the precomputed layout',
        description='Run a mask backend on every --every-th frame of SEQ_DIR and write '
                    'mask/<stem>.png, mask_scores/ and (with CLIP weights) mask_embeddings/ '
                    'under MASK_DIR, the layout `onlineanyseg run --masks` reads.')
    parser.add_argument('sequence', metavar='SEQ_DIR', help='ScanNet-format sequence folder')
    parser.add_argument('--backend', choices=('geometric', 'cropformer', 'simulated'),
                        default='geometric', help='mask source (default: %(default)s; '
                        'simulated needs the instance/ images of a synthetic sequence)')
    parser.add_argument('--out', required=True, metavar='MASK_DIR', help='output folder')
    parser.add_argument('--every', type=int, default=10,
                        help='process frames 0, N, 2N, ... (default: %(default)s)')
    parser.add_argument('--clip-checkpoint', metavar='PATH', default='',
                        help='open_clip ViT-H-14 checkpoint (default: the Hugging Face cache; '
                             'without weights no embeddings are written)')
    parser.add_argument('--no-clip', action='store_true', help='write no embeddings')
    parser.add_argument('--device', default='auto',
                        help='torch device for CropFormer and CLIP (default: %(default)s)')
    parser.add_argument('--cropformer-config', default='', metavar='YAML',
                        help='CropFormer config file (cropformer backend)')
    parser.add_argument('--cropformer-checkpoint', default='', metavar='PTH',
                        help='CropFormer checkpoint (cropformer backend)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the simulated backend')
    parser.set_defaults(func=run)


def _instance_categories(sequence) -> dict:
    """Return ``{instance id: class id}`` from the synthetic sequence's meta.json."""
    for folder in (sequence.root, sequence.root.parent):
        meta_path = pathlib.Path(folder) / 'meta.json'
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            return {int(item['instance_id']): int(item['class_id'])
                    for item in meta['instances']}
    raise FileNotFoundError(f'{sequence.root}: the simulated backend needs meta.json with the '
                            'instance table (a sequence written by `onlineanyseg synth`)')


def _make_generator(args: argparse.Namespace, sequence, device: str):
    """Build the generator of ``args.backend`` for ``sequence``."""
    from onlineanyseg_ros.perception.factory import make_mask_generator
    if args.backend == 'geometric':
        return make_mask_generator('geometric')
    if args.backend == 'cropformer':
        return make_mask_generator('cropformer', config_file=args.cropformer_config,
                                   checkpoint=args.cropformer_checkpoint, device=device)
    kept_index = {frame_index: i for i, frame_index in enumerate(sequence.frame_indices)}

    def load_instances(frame_index: int):
        image = sequence.instance_image(kept_index[frame_index])
        if image is None:
            raise FileNotFoundError(f'{sequence.root}: no instance/ images for the simulated '
                                    'backend')
        return image
    return make_mask_generator('simulated', instance_image_loader=load_instances,
                               instance_categories=_instance_categories(sequence),
                               seed=args.seed)


def _load_embedder(args: argparse.Namespace, device: str):
    """Return a ClipEmbedder, or None when disabled or no weights are found."""
    if args.no_clip or args.backend == 'simulated':
        return None  # simulated masks carry their own simulated features
    from onlineanyseg_ros.perception.clip_embedder import ClipEmbedderConfig, load_clip_embedder
    return load_clip_embedder(ClipEmbedderConfig(checkpoint_path=args.clip_checkpoint,
                                                 device=device))


def compute_masks(args: argparse.Namespace) -> dict:
    """Write the masks of ``args.sequence`` to ``args.out``; return a summary dict."""
    import numpy as np
    from tqdm import tqdm

    from onlineanyseg_ros.core.types import MaskObservation
    from onlineanyseg_ros.data.scannet import ScanNetSequence
    from onlineanyseg_ros.perception.clip_embedder import resolve_device
    from onlineanyseg_ros.perception.precomputed import write_mask_observation

    device = str(resolve_device(args.device))
    sequence = ScanNetSequence(args.sequence, every=args.every)
    generator = _make_generator(args, sequence, device)
    embedder = _load_embedder(args, device)
    out = pathlib.Path(args.out)
    started = time.perf_counter()
    total_masks = 0
    for stem, frame in tqdm(zip(sequence.stems, sequence), total=len(sequence),
                            desc=f'{generator.name} masks', unit='frame'):
        obs = generator.generate(frame)
        if embedder is not None:
            features = embedder.embed_masks(frame.color, obs.labels)
            obs = MaskObservation(labels=obs.labels, features=features, scores=obs.scores)
        write_mask_observation(out, stem, obs)
        total_masks += np.unique(obs.labels[obs.labels > 0]).size
    elapsed = time.perf_counter() - started
    return {'frames': len(sequence), 'masks': total_masks, 'seconds': elapsed,
            'embeddings': embedder is not None, 'backend': generator.name}


def run(args: argparse.Namespace) -> int:
    """Entry point of `onlineanyseg masks`."""
    from onlineanyseg_ros.perception.cropformer import CropFormerUnavailable

    if args.every < 1:
        LOG.error('--every must be >= 1, got %d', args.every)
        return 2
    try:
        summary = compute_masks(args)
    except CropFormerUnavailable as error:
        LOG.error('%s', error)
        return 1
    frames = max(summary['frames'], 1)
    print(f'{summary["frames"]} frames, {summary["masks"]} masks '
          f'({summary["masks"] / frames:.1f} per frame), '
          f'{summary["seconds"] / frames:.3f} s per frame, embeddings '
          f'{"written" if summary["embeddings"] else "off"} -> {args.out}')
    return 0
