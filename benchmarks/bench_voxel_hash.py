"""Time ``VoxelHash.insert`` and ``lookup`` on a stream of frame-like voxel key sets.

A camera sweeps a large room: each frame sees a ``--width`` x ``--height`` pixel grid on a
wavy wall ``--depth-m`` away, moved ``--step-m`` along the wall per frame, at 2.5 cm voxels.
Its pixel keys (hundreds of thousands, with runs of equal keys as in a real depth image)
are inserted, then looked up again. A frame overlaps its predecessors, so most keys exist
already and a few thousand are new, as when a segmenter integrates a sequence.

Reports p50 / p95 ms of both calls per frame over the run and for the first and last
``--window`` frames (the cost must not grow with the table), the lookup window, table size,
and on CUDA the host syncs per call (``torch.cuda.set_sync_debug_mode``):

    python benchmarks/bench_voxel_hash.py --device cuda --frames 2000
    python benchmarks/bench_voxel_hash.py --device cuda --frames 2000 --sync-free 0
    python benchmarks/bench_voxel_hash.py --device cuda --frames 2000 --graphs 0

(``--graphs 0``: sync-free inserts launched op by op instead of replayed from CUDA graphs.)
"""

import argparse
import contextlib
import json
import statistics
import time

import torch
from tqdm import tqdm

from onlineanyseg_ros.core.profiling import HostSyncCounter, latency_summary
from onlineanyseg_ros.core.voxel_hash import voxel_keys, VoxelHash

VOXEL_SIZE_M = 0.025


def frame_points(index: int, args: argparse.Namespace, device: torch.device) -> torch.Tensor:
    """Float32 ``(H * W, 3)`` points of frame ``index`` (a wavy wall in front of the camera)."""
    height, width = args.height, args.width
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                          torch.arange(width, device=device, dtype=torch.float32),
                          indexing='ij')
    x = (u - width / 2) / args.focal_px * args.depth_m + index * args.step_m
    y = (v - height / 2) / args.focal_px * args.depth_m
    z = args.depth_m + 0.2 * torch.sin(3.0 * x) * torch.cos(2.0 * y)
    return torch.stack((x, y, z), dim=-1).reshape(-1, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--frames', type=int, default=500)
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--focal-px', type=float, default=525.0)
    parser.add_argument('--depth-m', type=float, default=2.0)
    parser.add_argument('--step-m', type=float, default=0.02)
    parser.add_argument('--window', type=int, default=100,
                        help='frames at the start and the end compared')
    parser.add_argument('--sync-free', type=int, choices=(0, 1), default=None,
                        help='force the probing mode (default: sync-free on CUDA only)')
    parser.add_argument('--graphs', type=int, choices=(0, 1), default=None,
                        help='replay sync-free inserts from CUDA graphs (default: on CUDA)')
    parser.add_argument('--sync-samples', type=int, default=20,
                        help='frames (spread over the run) whose host syncs are counted')
    parser.add_argument('--json', help='write the results here')
    args = parser.parse_args()
    device = torch.device(args.device)
    sync_free = None if args.sync_free is None else bool(args.sync_free)
    voxel_hash = VoxelHash(device, sync_free=sync_free,
                           use_graphs=None if args.graphs is None else bool(args.graphs))

    def synchronized_ms(call, syncs: HostSyncCounter, counted: bool) -> float:
        """Wall time of ``call()`` between two device synchronizations (ms).

        ``counted``: add the call's host syncs (not the timing's own) to ``syncs``.
        """
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with syncs.counting() if counted else contextlib.nullcontext():
            call()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1e3

    insert_ms, lookup_ms, new_keys = [], [], []
    insert_syncs, lookup_syncs = HostSyncCounter(device), HostSyncCounter(device)
    sample_every = max(args.frames // max(args.sync_samples, 1), 1)
    for index in tqdm(range(args.frames), desc='frames', unit='frame'):
        keys = voxel_keys(frame_points(index, args, device), VOXEL_SIZE_M)
        before = voxel_hash.num_slots
        counted = index % sample_every == sample_every - 1
        insert_ms.append(synchronized_ms(lambda: voxel_hash.insert(keys), insert_syncs,
                                         counted))
        new_keys.append(voxel_hash.num_slots - before)
        lookup_ms.append(synchronized_ms(lambda: voxel_hash.lookup(keys), lookup_syncs,
                                         counted))
    window = min(args.window, args.frames)
    samples = len(range(sample_every - 1, args.frames, sample_every))
    result = {
        'device': str(device), 'frames': args.frames, 'pixels': args.width * args.height,
        'sync_free': voxel_hash.sync_free, 'graphs': voxel_hash.graph_stats,
        'slots': voxel_hash.num_slots,
        'table_size': voxel_hash.table_size, 'window': voxel_hash.window,
        'new_keys_per_frame_p50': statistics.median(new_keys),
        'insert': latency_summary(insert_ms[1:]), 'lookup': latency_summary(lookup_ms[1:]),
        'insert_first': latency_summary(insert_ms[1:window + 1]),
        'insert_last': latency_summary(insert_ms[-window:]),
    }
    if device.type == 'cuda':
        result['syncs_per_insert'] = insert_syncs.count / samples
        result['syncs_per_lookup'] = lookup_syncs.count / samples
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump(result, handle, indent=1)


if __name__ == '__main__':
    main()
