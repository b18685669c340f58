"""OnlineSegmenter end to end on a synthetic room with ground truth."""

import numpy as np
import pytest
import torch

from onlineanyseg_ros.core.config import segmenter_config
from onlineanyseg_ros.core.lifting_graph import Capacities, GraphLifter
from onlineanyseg_ros.core.profiling import HostSyncCounter
from onlineanyseg_ros.core.segmenter import OnlineSegmenter
from onlineanyseg_ros.core.types import MaskObservation, RgbdFrame
from onlineanyseg_ros.data import synthetic
from onlineanyseg_ros.eval.ap import average_precision, evaluate_scene
from onlineanyseg_ros.perception.simulated import noise_free_config, SimulatedMaskGenerator

WIDTH, HEIGHT, NUM_FRAMES, KEYFRAME_EVERY = 320, 240, 150, 5


@pytest.fixture(scope='module')
def room():
    """Keyframes with perfect (noise-free) masks of a small room, and its GT cloud."""
    config = synthetic.SyntheticSceneConfig(num_frames=NUM_FRAMES, width=WIDTH, height=HEIGHT,
                                            focal_px=525.0 * WIDTH / 640, seed=1,
                                            depth_noise_std_m=0.0)
    scene = synthetic.build_scene(config)
    poses = synthetic.camera_trajectory(config)
    K = synthetic.intrinsics(config)
    indices = range(0, NUM_FRAMES, KEYFRAME_EVERY)
    rendered = {i: synthetic.render_frame(scene, config, poses[i], i) for i in indices}
    frames = [RgbdFrame(rendered[i].color, rendered[i].depth, K, poses[i], frame_index=i)
              for i in indices]
    categories = {instance.instance_id: instance.class_id for instance in scene.instances}
    generator = SimulatedMaskGenerator(lambda i: rendered[i].instance, categories,
                                       noise_free_config(min_mask_pixels=100, feature_dim=64),
                                       seed=0)
    masks = [generator.generate(frame) for frame in frames]
    gt_points, _, gt_ids = synthetic.sample_ground_truth(scene, config.gt_point_spacing_m)
    return frames, masks, gt_points, synthetic.ground_truth_labels(scene, gt_ids)


def _segment(frames, masks, profile='default', **overrides):
    torch.manual_seed(0)
    segmenter = OnlineSegmenter(segmenter_config(profile, overrides))
    for frame, mask in zip(frames, masks):
        segmenter.integrate(frame, mask)
    return segmenter


def _metrics(exported, gt_points, gt_labels):
    scene = evaluate_scene(exported.points, exported.instance_ids, exported.scores, gt_points,
                           gt_labels)
    return average_precision([scene])


def test_perfect_masks_recover_every_instance(room):
    frames, masks, gt_points, gt_labels = room
    segmenter = _segment(frames, masks)
    assert segmenter.merge_rounds == len(frames) // 5
    metrics = _metrics(segmenter.labeled_points(), gt_points, gt_labels)
    assert metrics['ap50'] >= 0.95, metrics
    assert metrics['per_threshold']['0.50']['recall'] == 1.0, metrics


def test_method_beats_greedy_overlap_baseline_on_the_same_masks(room):
    frames, masks, gt_points, gt_labels = room
    method = _metrics(_segment(frames, masks).labeled_points(), gt_points, gt_labels)
    greedy = _metrics(_segment(frames, masks, 'greedy_baseline').labeled_points(), gt_points,
                      gt_labels)
    assert method['ap'] > greedy['ap'], (method, greedy)


def test_save_load_round_trip_and_geometry_only_frames(room, tmp_path):
    frames, masks, _, _ = room
    segmenter = _segment(frames[:10], masks[:10])
    # A frame without masks is geometry only: no insertion, no schedule change.
    insertions = segmenter.insertions
    segmenter.integrate(frames[10], None)
    assert segmenter.insertions == insertions and segmenter.frames_integrated == 11
    empty = MaskObservation(np.zeros((HEIGHT, WIDTH), np.int32))
    assert segmenter.integrate(frames[11], empty).masks_inserted == 0
    paths = segmenter.save(tmp_path)
    before = segmenter.labeled_points()
    restored = OnlineSegmenter()
    restored.load(tmp_path)
    after = restored.labeled_points()
    assert np.array_equal(before.instance_ids, after.instance_ids)
    assert np.allclose(before.points, after.points)
    saved = np.load(paths['npz'])
    assert np.array_equal(saved['instance_ids'], before.instance_ids)
    assert saved['scores'].shape == (before.num_instances,)
    with pytest.raises(ValueError, match='do not match depth'):
        segmenter.integrate(frames[0], MaskObservation(np.zeros((4, 4), np.int32)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA-graph lifting needs a GPU')
def test_cuda_graph_lifting_builds_the_same_masks_as_eager_lifting(room):
    frames, masks, _, _ = room

    def inserted(graph_lifting):
        segmenter = OnlineSegmenter(segmenter_config(
            'default', {'cuda_graph_lifting': graph_lifting}), device='cuda')
        counts = [segmenter.integrate(frame, mask).masks_inserted
                  for frame, mask in zip(frames, masks)]
        return counts, segmenter

    graph_counts, graph = inserted(True)
    eager_counts, eager = inserted(False)
    assert graph_counts == eager_counts and sum(graph_counts) > 0
    assert graph.lifting_stats['replays'] >= len(frames)
    assert graph.lifting_stats['fallbacks'] == 0 and eager.lifting_stats == {}
    assert graph.num_voxels == eager.num_voxels
    # The voxel-hash inserts (frames' pixels, keyframes' lifted voxels) replay graphs too.
    assert graph.hash_graph_stats['replays'] > graph.hash_graph_stats['captures'] > 0


def test_launched_lifting_builds_the_same_map_as_eager_lifting(room):
    frames, masks, _, _ = room
    # Few kNN neighbours: the windows hold them, which keeps lift_padded fast on the CPU.
    config = segmenter_config('default', {'merge_every_n_keyframes': 4, 'outlier_neighbors': 3})
    eager = OnlineSegmenter(config)
    launched = OnlineSegmenter(config)
    # The CUDA path's lifter (launch, then read with the hash insert), run eagerly here;
    # small capacities make the first keyframes rerun.
    launched._lifter = GraphLifter(config, torch.device('cpu'), Capacities(
        cells=1024, edges=2048, pending=64, pairs=4096, far=4, far_pairs=256, hits=2048,
        observed_keys=512))
    for frame, mask in zip(frames[:12], masks[:12]):
        assert eager.integrate(frame, mask) == launched.integrate(frame, mask)
    assert launched.lifting_stats['regrowths'] >= 1
    assert torch.equal(launched._hash.keys, eager._hash.keys)
    assert launched.num_merged_masks == eager.num_merged_masks
    assert np.array_equal(launched.labeled_points().instance_ids,
                          eager.labeled_points().instance_ids)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='counts CUDA host syncs')
def test_keyframes_and_frames_read_the_host_a_fixed_few_times(room):
    frames, masks, _, _ = room
    device = torch.device('cuda')
    segmenter = OnlineSegmenter(segmenter_config('default', {'merge_every_n_keyframes': 1000}),
                                device=str(device))
    counter = HostSyncCounter(device)

    def syncs(frame, mask):
        before = counter.count
        with counter.counting():
            segmenter.integrate(frame, mask)
        return counter.count - before

    keyframe_syncs = [syncs(frame, mask) for frame, mask in zip(frames, masks)]
    frame_syncs = [syncs(frame, None) for frame in frames]
    # Keyframe: the pixels' voxel-hash insert (while the lifting replays on its stream),
    # the lifted voxels' hash insert with the lifting status, the mask graph's two size
    # reads. Frame: the voxel-hash insert. More only while the lifter's capacities or the
    # hash grow (the first keyframes).
    assert np.median(keyframe_syncs[10:]) == 4
    assert np.median(frame_syncs) == 1
