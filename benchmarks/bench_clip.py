"""Throughput of the CLIP mask embedder: masks per second at bf16 and fp32.

Random weights (no download): ``open_clip.create_model('ViT-H-14')`` without pretrained
weights has the cost of the real model. One synthetic 640x480 frame with ``--masks`` masks
(3 crops each) is embedded ``--repeats`` times after ``--warmup`` runs; the median wall time
(CUDA-synchronized) gives masks/s for the whole ``embed_masks`` call (crops, resize,
encoder) and for the encoder alone on a ready batch.

    python benchmarks/bench_clip.py                 # ViT-H-14 on CUDA, bf16 and fp32
    python benchmarks/bench_clip.py --smoke         # tiny model on the CPU, a few seconds
"""

import argparse
import json
import tempfile

import numpy as np
import open_clip
import torch

from onlineanyseg_ros.core.profiling import median_seconds
from onlineanyseg_ros.perception.clip_embedder import ClipEmbedder, ClipEmbedderConfig

TINY_MODEL = {'embed_dim': 32,
              'vision_cfg': {'image_size': 64, 'layers': 1, 'width': 64, 'head_width': 32,
                             'patch_size': 16},
              'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 32, 'heads': 2,
                           'layers': 1}}


def synthetic_masks(num_masks: int, height: int = 480, width: int = 640, seed: int = 0):
    """Return a random uint8 RGB image and a label image with ``num_masks`` rectangles."""
    rng = np.random.default_rng(seed)
    color = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    labels = np.zeros((height, width), dtype=np.int32)
    for k in range(1, num_masks + 1):
        h, w = rng.integers(20, 200, size=2)
        top, left = rng.integers(0, height - h), rng.integers(0, width - w)
        labels[top:top + h, left:left + w] = k
    return color, labels


def bench(model_name: str, device: str, precision: str, num_masks: int, batch_size: int,
          warmup: int, repeats: int) -> dict:
    """Measure one (model, precision) setting; return its numbers."""
    torch.manual_seed(0)
    model = open_clip.create_model(model_name)
    embedder = ClipEmbedder(model, ClipEmbedderConfig(model=model_name, device=device,
                                                      precision=precision,
                                                      batch_size=batch_size))
    color, labels = synthetic_masks(num_masks)
    num_present = int(np.unique(labels[labels > 0]).size)
    full_s = median_seconds(lambda: embedder.embed_masks(color, labels), embedder.device,
                            warmup, repeats)
    crops = torch.randn(3 * num_present, 3, *embedder.image_size, device=embedder.device,
                        dtype=embedder.dtype)

    def encode_only():
        with torch.inference_mode():
            for start in range(0, crops.shape[0], batch_size):
                embedder.model.encode_image(crops[start:start + batch_size])
    encode_s = median_seconds(encode_only, embedder.device, warmup, repeats)
    return {'model': model_name, 'device': str(embedder.device), 'dtype': str(embedder.dtype),
            'masks': num_present, 'crops': 3 * num_present, 'batch_size': batch_size,
            'embed_masks_s': full_s, 'masks_per_s': num_present / full_s,
            'encoder_only_s': encode_s, 'encoder_masks_per_s': num_present / encode_s}


def main() -> int:
    """Run the benchmark and print one JSON line per setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--smoke', action='store_true', help='tiny model on the CPU')
    parser.add_argument('--masks', type=int, default=50)
    parser.add_argument('--batch-size', type=int, default=150)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=10)
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as folder:
            path = f'{folder}/bench-tiny-clip.json'
            with open(path, 'w') as stream:
                json.dump(TINY_MODEL, stream)
            open_clip.add_model_config(path)
            print(json.dumps(bench('bench-tiny-clip', 'cpu', 'fp32', 10, args.batch_size,
                                   1, 2)))
        return 0
    if not torch.cuda.is_available():
        parser.error('CUDA is not available (use --smoke for the CPU check)')
    for precision in ('bf16', 'fp32'):
        print(json.dumps(bench('ViT-H-14', 'cuda', precision, args.masks, args.batch_size,
                               args.warmup, args.repeats)), flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
