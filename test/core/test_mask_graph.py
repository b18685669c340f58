"""MaskGraph against a naive Python-set reference of method.md 3.6, 4.5 and 4.7."""

from collections import defaultdict
from dataclasses import replace
import random

import numpy as np
import pytest
import torch

from onlineanyseg_ros.core import mask_graph, merging
from onlineanyseg_ros.core.config import SegmenterConfig
from onlineanyseg_ros.core.mask_graph import MaskGraph

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


class NaiveMask:
    """One merged mask of the reference: voxel set, frame set, weight, raw ids."""

    def __init__(self, voxels, frames, weight, raws, created):
        self.voxels, self.frames, self.weight = set(voxels), set(frames), weight
        self.raws, self.created = list(raws), created


class NaiveGraph:
    """The reference bookkeeping with Python sets and loops over pairs."""

    def __init__(self, config):
        self.config = config
        self.obs = defaultdict(set)
        self.masks = []
        self.C = np.zeros((0, 0))
        self.num_raw = 0
        self.now = -1

    def gate(self, overlap, visible, size):
        ratio = min(overlap / visible, 1.0)
        cfg = self.config
        seen = visible / size > cfg.visible_ratio_min or visible > cfg.visible_min_voxels
        return ratio if seen and ratio > cfg.contain_min else 0.0

    def contain(self, a, b):
        """Return (a contains b, b contains a) with visibility normalisation."""
        overlap = len(a.voxels & b.voxels)
        if not overlap:
            return None
        b_seen_by_a = sum(1 for v in b.voxels if self.obs[v] & a.frames)
        a_seen_by_b = sum(1 for v in a.voxels if self.obs[v] & b.frames)
        return (self.gate(overlap, b_seen_by_a, len(b.voxels)),
                self.gate(overlap, a_seen_by_b, len(a.voxels)))

    def set_pair(self, a, b):
        result = self.contain(self.masks[a], self.masks[b])
        if result is not None:
            self.C[a, b], self.C[b, a] = result

    def insert(self, observed, masks, frame):
        self.now = frame
        for v in set(observed).union(*masks):
            self.obs[v].add(frame)
        old = len(self.masks)
        for voxels in masks:
            self.masks.append(NaiveMask(voxels, {frame}, 1, [self.num_raw], frame))
            self.num_raw += 1
        grown = np.eye(len(self.masks))
        grown[:old, :old] = self.C
        self.C = grown
        for new in range(old, len(self.masks)):
            for existing in range(old):
                self.set_pair(new, existing)

    def renumber(self, kept, groups):
        new_masks = [self.masks[i] for i in kept]
        for group in groups:
            members = [self.masks[i] for i in group]
            new_masks.append(NaiveMask(
                set().union(*(m.voxels for m in members)),
                set().union(*(m.frames for m in members)),
                sum(m.weight for m in members), sum((m.raws for m in members), []),
                self.now))
        old_c = self.C
        self.masks = new_masks
        self.C = np.eye(len(new_masks))
        self.C[:len(kept), :len(kept)] = old_c[np.ix_(kept, kept)]
        for a in range(len(kept), len(new_masks)):
            for b in range(a):
                self.set_pair(a, b)

    def merge(self, pairs):
        parent = list(range(len(self.masks)))

        def root(i):
            while parent[i] != i:
                i = parent[i]
            return i
        for i, j in pairs:
            parent[max(root(i), root(j))] = min(root(i), root(j))
        components = defaultdict(list)
        for i in range(len(self.masks)):
            components[root(i)].append(i)
        groups = sorted((c for c in components.values() if len(c) > 1), key=min)
        kept = sorted(c[0] for c in components.values() if len(c) == 1)
        if groups:
            self.renumber(kept, groups)

    def prune(self):
        expiry = self.config.singleton_expiry_keyframes
        kept = [i for i, m in enumerate(self.masks)
                if not (m.weight <= 1 and self.now - m.created >= expiry)]
        self.renumber(kept, [])

    def refresh(self):
        self.C = np.eye(len(self.masks))
        for a in range(len(self.masks)):
            for b in range(a):
                self.set_pair(a, b)

    def merged_of_raw(self):
        result = [-1] * self.num_raw
        for index, mask in enumerate(self.masks):
            for raw in mask.raws:
                result[raw] = index
        return result


def random_frame(rng, frame, max_masks):
    """Return (observed slots, post-boundary mask sets) of one frame on a growing slot space."""
    span = 80 + 12 * frame
    pre = []
    for _ in range(rng.randint(1, max_masks)):
        start, length = rng.randrange(span), rng.randint(8, 45)
        pre.append({s for s in range(start, start + length) if rng.random() > 0.15})
    counts = defaultdict(int)
    for voxels in pre:
        for v in voxels:
            counts[v] += 1
    masks = [{v for v in voxels if counts[v] == 1} for voxels in pre]
    masks = [m for m in masks if len(m) > 3]
    dropped = set(range(rng.randrange(span), span)) if rng.random() < 0.3 else set()
    return sorted(set().union(*pre) | dropped), masks


def insert(graph, observed, masks, features=None, scores=None):
    """Insert Python sets into the graph as packed tensors."""
    slots = [s for m in masks for s in sorted(m)]
    offsets = np.cumsum([0] + [len(m) for m in masks])
    graph.insert_frame(torch.tensor(observed, dtype=torch.int64),
                       torch.tensor(slots, dtype=torch.int64),
                       torch.tensor(offsets, dtype=torch.int64), features, scores)


def check_same(graph, naive):
    """Compare containment, weights, voxel sets, frame sets and raw -> merged map."""
    assert graph.num_merged == len(naive.masks)
    np.testing.assert_allclose(graph.containment.cpu().numpy(), naive.C, atol=1e-6)
    assert graph.weights.tolist() == [m.weight for m in naive.masks]
    assert graph.merged_of_raw.tolist() == naive.merged_of_raw()
    all_slots = torch.arange(naive.obs and max(naive.obs) + 5 or 1, device=graph.device)
    point, merged = graph.membership(all_slots)
    voxel_sets = defaultdict(set)
    for p, m in zip(point.tolist(), merged.tolist()):
        voxel_sets[m].add(p)
    assert [voxel_sets[i] for i in range(len(naive.masks))] == [m.voxels for m in naive.masks]
    assert graph.voxel_counts.tolist() == [len(m.voxels) for m in naive.masks]
    # The slot-sorted join runs hold the same pairs, each strictly by (slot, merged id), the
    # delta run's ids above the main run's.
    for slots, mids in ((graph._by_slot, graph._by_slot_mid),
                        (graph._delta_slot, graph._delta_mid)):
        by_slot = slots * (graph.num_merged + 1) + mids
        assert bool((by_slot[1:] > by_slot[:-1]).all())
    if graph._delta_mid.numel() and graph._by_slot_mid.numel():
        assert int(graph._delta_mid.min()) > int(graph._by_slot_mid.max())
    assert sorted(zip(graph._by_slot.tolist() + graph._delta_slot.tolist(),
                      graph._by_slot_mid.tolist() + graph._delta_mid.tolist())) == sorted(
        zip(graph._inc_slot.tolist(), graph._inc_mid.tolist()))
    shifts = torch.arange(63, device=graph.device)
    bits = ((graph._frames[:, :, None] >> shifts) & 1).flatten(1).cpu()
    assert [set(torch.nonzero(row).flatten().tolist()) for row in bits] == [
        m.frames for m in naive.masks]


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('frames,max_masks,seed',
                         [(9, 5, 0), (9, 6, 1), (100, 2, 2), (200, 2, 3)])
def test_query_a_merges_and_removals_match_naive_reference(device, frames, max_masks, seed):
    _run_against_naive_reference(device, frames, max_masks, seed)


def test_incidence_buffers_grow_and_stay_consistent(monkeypatch):
    # Buffers without free room: every insert grows them (by doubling).
    monkeypatch.setattr(mask_graph, '_MIN_PAIR_CAPACITY', 1)
    monkeypatch.setattr(mask_graph, '_INCIDENCE_HEADROOM', 1 << 40)
    _run_against_naive_reference('cpu', 60, 4, 11)


def test_visibility_in_chunks_when_a_frame_overlaps_many_voxels(monkeypatch):
    # A bound below every frame's (pair, voxel) count: inserts take the chunked path.
    monkeypatch.setattr(mask_graph, '_PAIR_VOXELS', 16)
    _run_against_naive_reference('cpu', 80, 4, 12)


def test_an_insert_reads_the_host_twice(host_reads):
    rng = random.Random(13)
    graph = MaskGraph(SegmenterConfig(), 'cpu')
    for frame in range(70):  # past the first frozen word
        observed, masks = random_frame(rng, frame, 6)
        slots = [s for m in masks for s in sorted(m)]
        offsets = np.cumsum([0] + [len(m) for m in masks])
        joins = graph.num_merged > 0
        with host_reads() as counter:
            graph.insert_frame(torch.tensor(observed, dtype=torch.int64),
                               torch.tensor(slots, dtype=torch.int64),
                               torch.tensor(offsets, dtype=torch.int64),
                               num_slots=max(observed) + 1)
        # Sizes: the pairs and joins (one read), the overlapping pairs and their expansions
        # (one read); nothing to join with: the pair count only. Freezing a word: one more.
        expected = (2 if joins else 1) if masks else 0
        assert counter.count == expected + (frame == 63), frame
    assert graph._frozen_keys.numel() > 0


def _run_against_naive_reference(device, frames, max_masks, seed):
    rng = random.Random(seed)
    config = SegmenterConfig(singleton_expiry_keyframes=6, visible_min_voxels=30)
    graph, naive = MaskGraph(config, device), NaiveGraph(config)
    for frame in range(frames):
        observed, masks = random_frame(rng, frame, max_masks)
        insert(graph, observed, masks)
        naive.insert(observed, masks, frame)
        check_same(graph, naive)
        num = len(naive.masks)
        if frame % 3 == 2 and num > 1:
            pairs = [(rng.randrange(num), rng.randrange(num)) for _ in range(num // 2)]
            pairs = [(i, j) for i, j in pairs if i != j]
            edges = torch.zeros((num, num), dtype=torch.bool, device=device)
            for i, j in pairs:
                edges[i, j] = True
            graph._merge(edges)
            naive.merge(pairs)
            check_same(graph, naive)
            graph._prune_singletons()
            naive.prune()
            check_same(graph, naive)
        if frame % 4 == 3:
            # Containment between masks that both survive never needs refreshing: it only
            # depends on their (unchanged) voxel sets and the bits of their own frames.
            naive.refresh()
            check_same(graph, naive)


def test_renumbering_order_kept_first_then_components_by_smallest_member():
    graph = MaskGraph(SegmenterConfig())
    insert(graph, list(range(70)), [set(range(i * 10, i * 10 + 8)) for i in range(7)])
    edges = torch.zeros((7, 7), dtype=torch.bool)
    edges[4, 1] = edges[3, 1] = edges[5, 2] = True  # components {1, 3, 4} and {2, 5}
    graph._merge(edges)
    assert graph.merged_of_raw.tolist() == [0, 2, 3, 2, 2, 3, 1]
    assert graph.weights.tolist() == [1, 1, 3, 2]


def test_membership_matches_python_reference():
    rng = random.Random(5)
    graph = MaskGraph(SegmenterConfig())
    voxel_sets = []
    for frame in range(4):
        observed, masks = random_frame(rng, frame, 4)
        insert(graph, observed, masks)
        voxel_sets += masks
    points = [rng.randrange(-3, 150) for _ in range(400)]
    point, merged = graph.membership(torch.tensor(points))
    expected = [(p, m) for p, slot in enumerate(points)
                for m, voxels in enumerate(voxel_sets) if slot in voxels]
    assert list(zip(point.tolist(), merged.tolist())) == expected


def test_same_frame_pairs_stay_zero_and_first_frame_only_diagonal():
    graph = MaskGraph(SegmenterConfig())
    # Overlapping masks of one frame (no boundary removal here) must not get containment.
    insert(graph, list(range(30)), [set(range(0, 20)), set(range(10, 30))])
    assert torch.equal(graph.containment, torch.eye(2))
    insert(graph, list(range(30)), [set(range(0, 30))])
    # Mask 2 holds all of mask 0; mask 0 holds 20 of the 30 slots of mask 2 seen in frame 0.
    assert graph.containment[2, 0] == 1.0
    assert torch.isclose(graph.containment[0, 2], torch.tensor(2 / 3))
    assert graph.containment[0, 1] == 0.0


def _frame(graph, ranges, observed=None, feature=None):
    masks = [set(range(*r)) for r in ranges]
    seen = sorted(set().union(*masks) | set(observed or ()))
    features = None if feature is None else feature.expand(len(ranges), -1).contiguous()
    insert(graph, seen, masks, features)


def _unit(*values):
    return torch.nn.functional.normalize(torch.tensor([values], dtype=torch.float32), dim=1)


def _points(stop):
    slots = torch.arange(stop).repeat(2)
    return slots, torch.ones((slots.numel(), 4))


CONFIG = SegmenterConfig(descriptor_min_points=10)


def test_two_halves_with_similar_features_merge_via_similarity():
    graph = MaskGraph(CONFIG)
    _frame(graph, [(0, 100)], feature=_unit(1, 0, 0))
    _frame(graph, [(50, 150)], feature=_unit(1, 0.1, 0))
    stats = graph.merge_round(*_points(150))
    assert stats['stage1_merged'] == 1 and graph.num_merged == 1
    assert graph.merged_of_raw.tolist() == [0, 0]
    assert graph.voxel_counts.tolist() == [150] and graph.weights.tolist() == [2]
    assert bool(graph.valid[0])


def test_dissimilar_features_do_not_merge():
    graph = MaskGraph(CONFIG)
    _frame(graph, [(0, 100)], feature=_unit(1, 0, 0))
    _frame(graph, [(50, 150)], feature=_unit(0, 1, 0))
    assert graph.merge_round(*_points(150))['stage1_merged'] == 0
    assert graph.num_merged == 2


def test_mask_without_descriptor_never_merges():
    graph = MaskGraph(CONFIG)
    _frame(graph, [(0, 100)], feature=_unit(1, 0, 0))
    _frame(graph, [(50, 150)], feature=_unit(1, 0, 0))
    slots, features = _points(52)  # mask 1 (slots 50..149) gets 4 points < 10
    stats = graph.merge_round(slots, features)
    assert stats['stage1_merged'] == 0
    assert graph.has_descriptor.tolist() == [True, False]


def test_inactive_terms_lower_the_threshold():
    graph = MaskGraph(CONFIG)
    _frame(graph, [(0, 100)])
    _frame(graph, [(50, 150)])
    # No features: S = S_ov 1 + S_geo 1 = 2 > 2.3 - 1 (one inactive term credited).
    assert graph.merge_round(*_points(150))['stage1_merged'] == 1
    graph = MaskGraph(CONFIG)
    _frame(graph, [(0, 100)])
    _frame(graph, [(50, 150)])
    # Descriptor 'none' too: S = 1 > 2.3 - 2; the point count still makes them eligible.
    assert graph.merge_round(torch.arange(150).repeat(2), None)['stage1_merged'] == 1
    assert graph.has_descriptor.tolist() == [True]
    graph = MaskGraph(replace(CONFIG, inactive_term_credit=0.5))
    _frame(graph, [(0, 100)])
    _frame(graph, [(50, 150)])
    # Credit 0.5 per inactive term: S = 1 < 2.3 - 1.
    assert graph.merge_round(torch.arange(150).repeat(2), None)['stage1_merged'] == 0


def test_contained_mask_is_absorbed_in_stage2():
    graph = MaskGraph(CONFIG)
    big, small = _unit(1, 0, 0), _unit(0, 1, 0)
    _frame(graph, [(0, 200)], feature=big)
    _frame(graph, [(0, 200)], feature=big)
    # The small part's frames observed the whole object: C[small, big] = 40 / 200.
    _frame(graph, [(0, 40)], observed=range(200), feature=small)
    _frame(graph, [(0, 40)], observed=range(200), feature=small)
    assert graph.containment[0, 2] == 1.0 and abs(graph.containment[2, 0] - 0.2) < 1e-6
    stats = graph.merge_round(*_points(200))
    assert stats['stage1_merged'] == 2 and stats['stage2_merged'] == 1
    assert graph.num_merged == 1 and graph.weights.tolist() == [4]
    assert graph.merged_of_raw.tolist() == [0, 0, 0, 0]


def test_stage2_needs_a_stage1_merge():
    graph = MaskGraph(CONFIG)
    _frame(graph, [(0, 200)], feature=_unit(1, 0, 0))
    _frame(graph, [(0, 40)], observed=range(200), feature=_unit(0, 1, 0))
    stats = graph.merge_round(*_points(200))
    assert stats['stage1_merged'] == 0 and stats['stage2_iterations'] == 0
    assert graph.num_merged == 2


@pytest.mark.parametrize('supporters,merged', [(5, True), (4, False)])
def test_weighted_supporter_rule(supporters, merged):
    graph = MaskGraph(SegmenterConfig(descriptor_min_points=10, contain_merge_iterations=0))
    for _ in range(supporters):
        _frame(graph, [(0, 100)], feature=_unit(0, 0, 1))
    graph.merge_round(*_points(100))
    assert graph.weights.tolist() == [supporters]
    # Two disjoint halves, each fully inside the (weighted) supporter.
    _frame(graph, [(0, 50)], feature=_unit(1, 0, 0))
    _frame(graph, [(50, 100)], feature=_unit(0, 1, 0))
    graph.merge_round(*_points(100))
    halves = graph.merged_of_raw[-2:].tolist()
    assert (halves[0] == halves[1]) is merged
    assert graph.num_merged == (2 if merged else 3)


def test_validity_threshold_follows_merge_time_up_to_the_cap():
    graph = MaskGraph(SegmenterConfig(descriptor_min_points=10, valid_weight_cap=3))
    x, y = _unit(1, 0, 0), _unit(0, 1, 0)
    _frame(graph, [(0, 100)], feature=x)
    _frame(graph, [(0, 100)], feature=x)
    assert not graph.valid.any()  # before any merge the threshold is 2
    graph.merge_round(*_points(300))
    assert graph.merge_time == 1 and graph.valid.tolist() == [True]  # threshold 2
    _frame(graph, [(200, 300)], feature=y)
    _frame(graph, [(200, 300)], feature=y)
    graph.merge_round(*_points(300))
    assert graph.weights.tolist() == [2, 2] and graph.valid.tolist() == [False, False]
    _frame(graph, [(0, 100)], feature=x)
    graph.merge_round(*_points(300))
    # Threshold min(2 + 2, cap 3) = 3.
    assert graph.weights.tolist() == [2, 3] and graph.valid.tolist() == [False, True]
    assert graph.merge_time == 3


def test_stale_singletons_are_pruned_after_expiry():
    graph = MaskGraph(SegmenterConfig(descriptor_min_points=10, singleton_expiry_keyframes=3))
    _frame(graph, [(0, 100)], feature=_unit(1, 0, 0))          # raw 0, singleton
    _frame(graph, [(200, 300)], feature=_unit(0, 1, 0))        # raw 1
    _frame(graph, [(200, 300)], feature=_unit(0, 1, 0))        # raw 2, merges with 1
    assert graph.merge_round(*_points(300))['removed'] == 0    # singleton age 2
    _frame(graph, [(500, 520)], feature=_unit(0, 0, 1))        # raw 3, new singleton
    stats = graph.merge_round(*_points(300))                   # raw 0 age 3: removed
    assert stats['removed'] == 1
    assert graph.merged_of_raw.tolist() == [-1, 0, 0, 1]
    assert graph.num_merged == 2 and graph.voxel_counts.tolist() == [100, 20]


def _round_in_method_order(graph, point_slots):
    """Run a merge round in method.md's order: stage 1, stage 2, then pruning on its own."""
    points = graph._points_per_slot(point_slots, None)
    graph._update_descriptors(*points)
    edges = merging.stage1_edges(graph.containment, graph.weights, graph.features, None,
                                 graph.has_descriptor, graph.config)
    stats = {'stage1_merged': graph._merge(edges, points)[0], 'stage2_merged': 0}
    if stats['stage1_merged']:
        graph._merge_time += 1
        for _ in range(graph.config.contain_merge_iterations):
            edges = merging.containment_edges(graph.containment, graph.valid,
                                              graph.config.contain_merge_ratio)
            edges &= graph.has_descriptor[:, None] & graph.has_descriptor[None, :]
            merged = graph._merge(edges, points)[0]
            stats['stage2_merged'] += merged
            if not merged:
                break
    stats['removed'] = graph._prune_singletons()
    return stats


@pytest.mark.parametrize('device', DEVICES)
def test_pruning_inside_stage_one_matches_pruning_after_stage_two(device):
    """merge_round prunes in stage 1's renumbering; the result equals pruning last."""
    config = SegmenterConfig(descriptor='none', descriptor_min_points=5,
                             singleton_expiry_keyframes=4, visible_min_voxels=30)
    rng = random.Random(7)
    folded, ordered = MaskGraph(config, device), MaskGraph(config, device)
    objects = [(start, start + rng.randint(20, 60)) for start in range(0, 2000, 80)]
    both_in_one_round = 0
    for frame in range(40):
        masks = []
        for start, stop in rng.sample(objects, 4):
            kept = {s for s in range(start, stop) if rng.random() > 0.2}
            if rng.random() < 0.3:  # a stray piece that never merges: pruned later
                kept = set(range(stop + 5, stop + 5 + rng.randint(6, 12)))
            masks.append(kept)
        observed = sorted(set().union(*masks))
        for graph in (folded, ordered):
            insert(graph, observed, masks)
        if frame % 5 == 4:
            point_slots = torch.arange(2200, device=device).repeat(2)
            stats = folded.merge_round(point_slots, None)
            expected = _round_in_method_order(ordered, point_slots)
            assert {k: stats[k] for k in expected} == expected
            both_in_one_round += bool(stats['stage1_merged'] and stats['removed'])
            assert torch.equal(folded.merged_of_raw, ordered.merged_of_raw)
            assert torch.equal(folded.weights, ordered.weights)
            assert torch.equal(folded.voxel_counts, ordered.voxel_counts)
            assert torch.equal(folded.containment, ordered.containment)
            assert torch.equal(folded._by_slot_mid, ordered._by_slot_mid)
            assert torch.equal(folded._delta_mid, ordered._delta_mid)
    assert both_in_one_round >= 2


def test_confidence_and_state_dict_round_trip():
    graph = MaskGraph(CONFIG)
    _frame(graph, [(0, 100)], feature=_unit(1, 0, 0))
    graph.insert_frame(torch.arange(50, 150), torch.arange(50, 150), torch.tensor([0, 100]),
                       _unit(1, 0, 0), torch.tensor([0.5]))
    _frame(graph, [(300, 400)], feature=_unit(0, 1, 0))
    graph.merge_round(*_points(400))
    confidence = graph.confidence
    # Merged mask: weight 2 of cap 5, seen in 2 of 3 insertions, mean score 0.75.
    assert torch.allclose(confidence, torch.tensor([0.2 * (0.5 + 0.5 * 1.0),
                                                    0.4 * (0.5 + 0.5 * 2 / 3) * 0.75]))
    restored = MaskGraph(CONFIG)
    restored.load_state_dict(graph.state_dict())
    for name in ('weights', 'valid', 'features', 'descriptors', 'merged_of_raw',
                 'containment', 'voxel_counts', 'confidence'):
        assert torch.equal(getattr(restored, name), getattr(graph, name)), name
    _frame(graph, [(0, 120)], feature=_unit(1, 0, 0))
    _frame(restored, [(0, 120)], feature=_unit(1, 0, 0))
    assert torch.equal(restored.containment, graph.containment)
    graph.reset()
    assert graph.num_merged == 0 and graph.num_insertions == 0 and graph.features is None


def test_bad_inputs_raise():
    graph = MaskGraph(CONFIG)
    with pytest.raises(ValueError, match='mask_slots'):
        graph.insert_frame(torch.arange(3), torch.arange(3.0), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match='features'):
        graph.insert_frame(torch.arange(3), torch.arange(3), torch.tensor([0, 3]),
                           torch.ones(2, 4))
    with pytest.raises(ValueError, match='slots'):
        graph.insert_frame(torch.tensor([-1]), torch.arange(3), torch.tensor([0, 3]))


def test_observation_store_keeps_only_nonzero_words_and_survives_a_round_trip():
    """Frozen entries are the (slot, word) pairs with a bit set; a restored graph goes on alike.

    A sliding window of slots over 140 insertions crosses two word boundaries; the graph is
    restored from its state after insertion 70 and both get the same later insertions.
    """
    config = SegmenterConfig(singleton_expiry_keyframes=1000)
    graph, restored = MaskGraph(config), None
    seen_words = set()
    for frame in range(140):
        start = 7 * frame
        observed = torch.arange(start, start + 60)
        masks = torch.arange(start + 5, start + 55)
        for target in (graph,) if restored is None else (graph, restored):
            target.insert_frame(observed, masks, torch.tensor([0, 25, 50]))
        seen_words.update((slot, frame // 63) for slot in range(start, start + 60)
                          if frame // 63 < 2)
        if frame == 70:
            restored = MaskGraph(config)
            restored.load_state_dict(graph.state_dict())
    # Words 0 and 1 are frozen (insertions 0-125); word 2 is the active one.
    assert graph._frozen_keys.numel() == len(seen_words)
    dense_bytes = graph._active_bits.numel() * 3 * 8
    assert graph.state_nbytes()['observations'] < dense_bytes
    assert torch.equal(restored.containment, graph.containment)
    assert (graph.containment > 0).sum() > graph.num_merged  # pairs did overlap
