"""OnlineSegmenter: the small facade over surface map, lifting, mask graph and export.

Verbs: ``integrate(frame, masks)`` fuses a frame's depth into the surface map and, when masks
are given, lifts and inserts them (merging on the method's schedule); ``merge()`` runs a merge
round now; ``instances()`` / ``labeled_points()`` export the current map; ``save(dir)`` /
``load(dir)`` persist it.
"""

import contextlib
from dataclasses import dataclass
import os
import pathlib
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from onlineanyseg_ros.core.config import config_from_dict, config_to_dict, SegmenterConfig
from onlineanyseg_ros.core.descriptors import make_descriptor
from onlineanyseg_ros.core.export import export_instances, ExportedMap
from onlineanyseg_ros.core.geometry import as_tensor, Backprojector, camera_center
from onlineanyseg_ros.core.greedy_merger import GreedyOverlapMerger
from onlineanyseg_ros.core.lifting import lift_masks, LiftedFrame
from onlineanyseg_ros.core.lifting_graph import GraphLifter, PendingLift, supports
from onlineanyseg_ros.core.mask_graph import MaskGraph
from onlineanyseg_ros.core.profiling import StageTimer
from onlineanyseg_ros.core.surface_map import SurfaceMap
from onlineanyseg_ros.core.types import MaskObservation, RgbdFrame
from onlineanyseg_ros.core.voxel_hash import VoxelHash

STATE_FILE = 'segmenter_state.pt'


@dataclass(frozen=True)
class IntegrationResult:
    """What one ``integrate`` call did (for logs and diagnostics)."""

    masks_in: int
    masks_inserted: int
    merged: bool
    dropped: Dict[str, int]


class OnlineSegmenter:
    """Online zero-shot 3D instance segmentation of an RGB-D stream (OnlineAnySeg).

    Args:
        config: method parameters; ``SegmenterConfig()`` is the project default.
        device: torch device for every tensor of the map ('cpu', 'cuda', 'cuda:1', ...).

    """

    def __init__(self, config: Optional[SegmenterConfig] = None, device: str = 'cpu'):
        self.config = config or SegmenterConfig()
        self.device = torch.device(device)
        # CUDA events, not device syncs: timing must not block the keyframe path.
        self.timer = StageTimer(self.device, synchronize=False)
        self._configure()

    def _configure(self) -> None:
        """Build what depends on the config only (descriptor, lifter), then reset the map."""
        self._descriptor = make_descriptor(self.config, self.device)
        self._backprojector = Backprojector(self.config.depth_near_m, self.config.depth_far_m,
                                            self.device)
        # The lifter's graph and capacities depend on the image size, not on the map.
        self._lifter = (GraphLifter(self.config, self.device)
                        if self.config.cuda_graph_lifting and self.device.type == 'cuda'
                        and supports(self.config) else None)
        self._lift_stream = (torch.cuda.Stream(self.device) if self._lifter is not None
                             else None)
        self.reset()

    def reset(self) -> None:
        """Forget the whole map (surface, masks, schedule counters)."""
        self._hash = VoxelHash(self.device)
        self._surface = SurfaceMap(self.config, self.device, self._hash)
        merger = GreedyOverlapMerger if self.config.merger == 'greedy_overlap' else MaskGraph
        self._graph = merger(self.config, self.device)
        self.frames_integrated = 0
        self.insertions = 0
        self.merge_rounds = 0
        self.semantic_active = False

    @property
    def num_merged_masks(self) -> int:
        """Current number of merged masks (valid or not)."""
        return int(self._graph.num_merged)

    @property
    def num_voxels(self) -> int:
        """Voxels allocated in the shared voxel hash."""
        return int(self._hash.num_slots)

    def integrate(self, frame: RgbdFrame,
                  masks: Optional[MaskObservation] = None) -> IntegrationResult:
        """Fuse ``frame`` into the surface map and insert its ``masks`` (None = geometry only).

        A mask insertion counts towards the merge schedule even when every mask is rejected,
        as in the reference (merges happen every ``merge_every_n_keyframes`` insertions).
        On CUDA a keyframe's lifting is replayed on a stream of its own while the surface
        map integrates the frame, and read (one host sync) together with the voxel-hash
        insert of its voxels when the masks are inserted.
        """
        config = self.config
        if masks is not None and masks.labels.shape != frame.depth.shape:
            raise ValueError(f'mask labels {masks.labels.shape} do not match depth '
                             f'{frame.depth.shape}')
        color = as_tensor(frame.color, self.device, torch.uint8)
        with self.timer.scope('backproject'):
            points, valid = self._backprojector(frame.depth, frame.K, frame.T_world_camera)
        lifted = pending = None
        if masks is not None:
            labels = as_tensor(masks.labels, self.device, torch.int64)
            with self._lifting_stream(points, valid, labels), self.timer.scope('lift'):
                if self._lifter is not None:
                    pending = self._lifter.launch(points, valid, labels)
                else:
                    lifted = lift_masks(points, valid, labels, config)
        with self.timer.scope('surface'):
            # The whole image with its mask: compacting the valid pixels would sync on CUDA.
            self._surface.integrate(points.reshape(-1, 3), color.reshape(-1, 3),
                                    camera_center(frame.T_world_camera, self.device),
                                    valid.reshape(-1))
        self.frames_integrated += 1
        if masks is None:
            return IntegrationResult(0, 0, False, {})
        with self.timer.scope('insert'):
            if pending is not None:
                lifted, observed_slots = self._read_lift(pending)
            else:
                observed_slots = self._hash.insert(lifted.observed_keys.to(self.device))
            inserted = self._insert(lifted, observed_slots, masks)
        self.insertions += 1
        merged = False
        if self.insertions % config.merge_every_n_keyframes == 0:
            self.merge()
            merged = True
        return IntegrationResult(masks.num_masks, inserted, merged, dict(lifted.dropped))

    @contextlib.contextmanager
    def _lifting_stream(self, *inputs: torch.Tensor) -> Iterator[None]:
        """Run the body on the lifting stream (CUDA), after the work queued so far.

        ``inputs`` are recorded on that stream: the caching allocator must not hand their
        memory out again before the lifting stream has read them.
        """
        if self._lift_stream is None:
            yield
            return
        self._lift_stream.wait_stream(torch.cuda.current_stream(self.device))
        for tensor in inputs:
            tensor.record_stream(self._lift_stream)
        with torch.cuda.stream(self._lift_stream):
            yield

    def _read_lift(self, pending: PendingLift) -> Tuple[LiftedFrame, torch.Tensor]:
        """Read a launched lift and insert its observed keys: ``(frame, observed slots)``.

        The hash inserts the padded keys and reads the lifting status in its own host
        sync. A frame that has to be rerun (capacities, fallback) inserted none of them;
        its rerun's keys are inserted then.
        """
        observed = pending.observed()
        if observed is None:
            lifted = pending.result()
        else:
            keys, valid, status = observed
            slots, status_values = self._hash.insert_reading(keys, valid, status)
            lifted = pending.result(status_values)
            if pending.launched:
                return lifted, slots[:lifted.observed_keys.numel()]
        return lifted, self._hash.insert(lifted.observed_keys)

    def _insert(self, lifted: LiftedFrame, observed_slots: torch.Tensor,
                masks: MaskObservation) -> int:
        """Insert the accepted masks of one frame into the graph; return how many.

        ``observed_slots``: int64 slots of ``lifted.observed_keys``.
        """
        observed_keys = lifted.observed_keys.to(self.device)
        # Every mask key is an observed key (boundary removal only drops keys), and the
        # observed keys are sorted: their slots are found, not inserted.
        mask_slots = observed_slots[torch.searchsorted(observed_keys,
                                                       lifted.mask_keys.to(self.device))]
        # Rows of the accepted masks, gathered on the device: reading the labels back would
        # sync, and every mask's feature row is a small upload.
        rows = lifted.labels.to(self.device) - 1
        features = None
        if masks.features is not None:
            features = as_tensor(masks.features, self.device, torch.float32)[rows]
            self.semantic_active = True
        scores = None
        if masks.scores is not None:
            scores = as_tensor(masks.scores, self.device, torch.float32)[rows]
        self._graph.insert_frame(observed_slots, mask_slots, lifted.mask_offsets.to(self.device),
                                 features, scores, num_slots=self._hash.num_slots)
        return rows.numel()

    def merge(self) -> Dict[str, float]:
        """Run one merge round (stage 1, stage 2, pruning) now."""
        with self.timer.scope('merge'):
            surface = self._surface.surface(with_normals=self._descriptor is not None)
            point_features = None
            if self._descriptor is not None:
                with self.timer.scope('descriptor'):
                    point_features = self._descriptor.point_features(surface.points,
                                                                     surface.normals)
            stats = self._graph.merge_round(surface.slots, point_features)
        self.merge_rounds += 1
        return stats

    def labeled_points(self) -> ExportedMap:
        """Export surface points with instance ids, scores and features (host numpy)."""
        with self.timer.scope('export'):
            return export_instances(self._surface.surface(with_normals=False), self._graph,
                                    self.config)

    def instances(self) -> List[dict]:
        """Per exported instance: id, score, point count, box centre and size (metres)."""
        return self.labeled_points().instance_table()

    def save(self, directory: str) -> Dict[str, str]:
        """Write instances.ply / instances.npz / summary.json and the resumable state."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        exported = self.labeled_points()
        paths = exported.save(directory, summary=self.summary())
        state_path = directory / STATE_FILE
        temporary = state_path.with_suffix('.tmp')
        torch.save({'config': config_to_dict(self.config),
                    'counters': [self.frames_integrated, self.insertions, self.merge_rounds,
                                 int(self.semantic_active)],
                    'surface': self._surface.state_dict(),
                    'graph': self._graph.state_dict(),
                    'hash_keys': self._hash.keys.cpu()}, temporary)
        os.replace(temporary, state_path)
        paths['state'] = str(state_path)
        return paths

    def load(self, directory: str) -> None:
        """Restore a map written by ``save`` (config included)."""
        state = torch.load(pathlib.Path(directory) / STATE_FILE, map_location=self.device)
        self.config = config_from_dict(SegmenterConfig, state['config'])
        self._configure()
        self._hash.insert(state['hash_keys'].to(self.device))
        self._surface.load_state_dict(state['surface'])
        self._graph.load_state_dict(state['graph'])
        counters = state['counters']
        self.frames_integrated, self.insertions, self.merge_rounds = counters[:3]
        self.semantic_active = bool(counters[3])

    @property
    def lifting_stats(self) -> Dict[str, int]:
        """CUDA-graph lifting counters (``GraphLifter.stats``); empty when lifting eagerly."""
        return dict(self._lifter.stats) if self._lifter is not None else {}

    @property
    def hash_graph_stats(self) -> Dict[str, int]:
        """Voxel-hash inserts replayed from CUDA graphs and their captures (0 on the CPU)."""
        return dict(self._hash.graph_stats)

    @property
    def backproject_graph_stats(self) -> Dict[str, int]:
        """Back-projections replayed from CUDA graphs and their captures (0 on the CPU)."""
        return dict(self._backprojector.stats)

    def summary(self) -> dict:
        """Map size, schedule counters and per-stage timing medians."""
        return {
            'frames_integrated': self.frames_integrated,
            'mask_insertions': self.insertions,
            'merge_rounds': self.merge_rounds,
            'merged_masks': self.num_merged_masks,
            'voxels': self.num_voxels,
            'semantic_term': self.semantic_active,
            'descriptor': self.config.descriptor,
            'device': str(self.device),
            'timings_ms': self.timer.summary(),
            'lifting_graph': self.lifting_stats,
            'voxel_hash_graph': self.hash_graph_stats,
            'backproject_graph': self.backproject_graph_stats,
        }
