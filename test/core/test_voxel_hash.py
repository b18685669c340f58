import pytest
import torch

from onlineanyseg_ros.core import voxel_hash as voxel_hash_module
from onlineanyseg_ros.core.voxel_hash import (COORD_OFFSET, pack_keys, unpack_keys, voxel_keys,
                                              VoxelHash)

# Every hash test runs both ways of probing: compacting (the CPU default) and sync-free
# (the CUDA default), on each available device.
DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
MODES = [pytest.param((device, sync_free),
                      id=f'{device}-{"sync_free" if sync_free else "compact"}')
         for device in DEVICES for sync_free in (False, True)]


def _reference_insert(table, keys):
    """Give new keys the next slot in order of first occurrence (dict reference)."""
    slots = []
    for key in keys.tolist():
        if key not in table:
            table[key] = len(table)
        slots.append(table[key])
    return slots


def test_pack_unpack_round_trip_including_extremes():
    generator = torch.Generator().manual_seed(0)
    ijk = torch.randint(-COORD_OFFSET, COORD_OFFSET, (5000, 3), generator=generator)
    ijk[:2] = torch.tensor([[-COORD_OFFSET] * 3, [COORD_OFFSET - 1] * 3])
    keys = pack_keys(ijk)
    assert keys.dtype == torch.int64
    assert bool((keys >= 0).all())
    assert torch.equal(unpack_keys(keys), ijk)
    # Distinct coordinates give distinct keys, and key order is lexicographic (i, j, k).
    assert torch.unique(keys).numel() == torch.unique(ijk, dim=0).shape[0]
    order = torch.argsort(keys)
    lexicographic = sorted(range(len(ijk)), key=lambda row: tuple(ijk[row].tolist()))
    assert torch.equal(ijk[order], ijk[lexicographic])


def test_voxel_keys_floor_negative_coordinates():
    points = torch.tensor([[0.0, 0.024, -0.001], [-0.025, 0.025, 0.051]])
    assert torch.equal(unpack_keys(voxel_keys(points, 0.025)),
                       torch.tensor([[0, 0, -1], [-1, 1, 2]]))


@pytest.mark.parametrize('mode', MODES)
def test_insert_and_lookup_match_dict_reference_through_growth(mode):
    device, sync_free = mode
    generator = torch.Generator().manual_seed(1)
    voxel_hash = VoxelHash(device, initial_capacity=4, sync_free=sync_free)
    reference = {}
    for _ in range(12):
        # Narrow coordinate range: many duplicates within and across batches.
        ijk = torch.randint(-30, 30, (int(torch.randint(0, 3000, (1,), generator=generator)),
                                      3), generator=generator)
        keys = pack_keys(ijk)
        slots = voxel_hash.insert(keys.to(device))
        assert slots.device.type == torch.device(device).type
        assert slots.tolist() == _reference_insert(reference, keys)
    assert voxel_hash.num_slots == len(reference)
    assert voxel_hash.table_size >= 2 * len(reference)
    assert voxel_hash.keys.tolist() == list(reference)
    probe = pack_keys(torch.randint(-40, 40, (4000, 3), generator=generator))
    expected = [reference.get(key, -1) for key in probe.tolist()]
    assert voxel_hash.lookup(probe.to(device)).tolist() == expected


@pytest.mark.parametrize('device', DEVICES)
def test_new_keys_past_the_placement_bound_are_placed_after_the_read(device, monkeypatch):
    monkeypatch.setattr(voxel_hash_module, '_MIN_PLACEMENT_BOUND', 8)
    generator = torch.Generator().manual_seed(9)
    voxel_hash = VoxelHash(device, initial_capacity=1 << 12, sync_free=True)
    reference = {}
    for size in (500, 40, 3, 900, 0, 60):
        keys = pack_keys(torch.randint(-40, 40, (size, 3), generator=generator))
        before = len(reference)
        assert voxel_hash.insert(keys.to(device)).tolist() == _reference_insert(reference, keys)
        # The bound follows the counts: twice the latest, halving per call, at least 8.
        assert voxel_hash._placement_bound >= max(8, 2 * (len(reference) - before))
    everything = torch.tensor(list(reference), dtype=torch.int64)
    assert voxel_hash.lookup(everything.to(device)).tolist() == list(range(len(reference)))


@pytest.mark.parametrize('mode', MODES)
def test_slots_stay_stable_after_rehash(mode):
    device, sync_free = mode
    voxel_hash = VoxelHash(device, initial_capacity=1, sync_free=sync_free)
    first = pack_keys(torch.tensor([[5, -3, 2], [0, 0, 0], [9, 9, 9]]))
    assert voxel_hash.insert(first.to(device)).tolist() == [0, 1, 2]
    size_before = voxel_hash.table_size
    many = pack_keys(torch.stack(torch.meshgrid(*[torch.arange(12)] * 3, indexing='ij'),
                                 -1).reshape(-1, 3) + 100)
    voxel_hash.insert(many.to(device))
    assert voxel_hash.table_size > size_before
    assert voxel_hash.lookup(first.to(device)).tolist() == [0, 1, 2]
    assert voxel_hash.insert(first.to(device)).tolist() == [0, 1, 2]
    assert voxel_hash.num_slots == 3 + many.numel()


@pytest.mark.parametrize('mode', MODES)
def test_shapes_empty_inputs_and_invalid_keys(mode):
    device, sync_free = mode
    voxel_hash = VoxelHash(device, sync_free=sync_free)
    assert voxel_hash.insert(torch.empty(0, dtype=torch.int64)).numel() == 0
    assert voxel_hash.lookup(torch.empty(0, dtype=torch.int64)).numel() == 0
    keys = pack_keys(torch.arange(12).reshape(4, 3)).reshape(2, 2)
    assert voxel_hash.insert(keys).tolist() == [[0, 1], [2, 3]]
    assert voxel_hash.lookup(keys.flip(0)).tolist() == [[2, 3], [0, 1]]
    with pytest.raises(ValueError, match='non-negative'):
        voxel_hash.insert(torch.tensor([-1]))
    with pytest.raises(ValueError, match='initial_capacity'):
        VoxelHash(device, initial_capacity=0)
    # Sync-free by default exactly on CUDA.
    assert VoxelHash(device).sync_free == (torch.device(device).type == 'cuda')


@pytest.mark.parametrize('mode', MODES)
def test_masked_out_entries_are_neither_inserted_nor_given_a_slot(mode):
    device, sync_free = mode
    voxel_hash = VoxelHash(device, initial_capacity=4, sync_free=sync_free)
    generator = torch.Generator().manual_seed(7)
    reference = {}
    for _ in range(6):
        keys = pack_keys(torch.randint(-20, 20, (2000, 3), generator=generator))
        valid = torch.rand(2000, generator=generator) < 0.7
        # Masked-out entries hold junk: negative keys, and keys of other entries (present
        # or new), none of which may be inserted.
        junk = torch.where(torch.rand(2000, generator=generator) < 0.5, -5, keys.flip(0))
        slots = voxel_hash.insert(torch.where(valid, keys, junk).to(device),
                                  valid.to(device)).cpu()
        assert slots[valid].tolist() == _reference_insert(reference, keys[valid])
        assert bool((slots[~valid] == -1).all())
        assert voxel_hash.num_slots == len(reference)
    with pytest.raises(ValueError, match='does not match'):
        voxel_hash.insert(keys.to(device), valid[:5].to(device))


@pytest.mark.parametrize('mode', MODES)
def test_a_negative_key_rejects_the_whole_insert_and_keeps_the_table(mode):
    device, sync_free = mode
    voxel_hash = VoxelHash(device, initial_capacity=8, sync_free=sync_free)
    old = pack_keys(torch.arange(30).reshape(10, 3))
    voxel_hash.insert(old.to(device))
    new = pack_keys(torch.arange(30, 60).reshape(10, 3))
    with pytest.raises(ValueError, match='non-negative'):
        voxel_hash.insert(torch.cat([new, torch.tensor([-3])]).to(device))
    assert voxel_hash.num_slots == 10
    assert voxel_hash.lookup(new.to(device)).tolist() == [-1] * 10
    assert voxel_hash.lookup(old.to(device)).tolist() == list(range(10))
    assert voxel_hash.insert(new.to(device)).tolist() == list(range(10, 20))


@pytest.mark.parametrize('sync_free', (True, False))
def test_sync_free_insert_reads_the_host_once(sync_free, host_reads):
    generator = torch.Generator().manual_seed(8)
    voxel_hash = VoxelHash('cpu', initial_capacity=1 << 14, sync_free=sync_free)
    voxel_hash.insert(pack_keys(torch.randint(-20, 20, (3000, 3), generator=generator)))
    keys = pack_keys(torch.randint(-25, 25, (3000, 3), generator=generator))
    valid = torch.rand(3000, generator=generator) < 0.8
    with host_reads() as reads:
        voxel_hash.insert(keys, valid)
    # Compacting mode: runs, absent keys, new-key count, placement (and valid rows).
    assert reads.count == 1 if sync_free else reads.count >= 4


@pytest.mark.parametrize('sync_free', (True, False))
def test_insert_reading_reads_the_extra_values_in_the_same_sync(sync_free, host_reads):
    generator = torch.Generator().manual_seed(9)
    keys = pack_keys(torch.randint(-25, 25, (3000, 3), generator=generator))
    valid = torch.rand(3000, generator=generator) < 0.8
    reference = VoxelHash('cpu', initial_capacity=1 << 14, sync_free=sync_free)
    voxel_hash = VoxelHash('cpu', initial_capacity=1 << 14, sync_free=sync_free)
    extra = torch.tensor([[7, -2], [0, 1 << 40]])
    with host_reads() as reads:
        slots, values = voxel_hash.insert_reading(keys, valid, extra)
    assert values == [7, -2, 0, 1 << 40]
    assert torch.equal(slots, reference.insert(keys, valid))
    assert reads.count == 1 if sync_free else reads.count >= 5
    slots, values = voxel_hash.insert_reading(keys[:0], extra=extra[0])
    assert slots.numel() == 0 and values == [7, -2]
    assert voxel_hash.insert_reading(keys)[1] == []


def test_state_dict_round_trip_and_reset():
    generator = torch.Generator().manual_seed(2)
    voxel_hash = VoxelHash('cpu', initial_capacity=8)
    keys = pack_keys(torch.randint(-100, 100, (500, 3), generator=generator))
    slots = voxel_hash.insert(keys)
    restored = VoxelHash('cpu')
    restored.load_state_dict(voxel_hash.state_dict())
    assert torch.equal(restored.lookup(keys), slots)
    assert torch.equal(restored.keys, voxel_hash.keys)
    with pytest.raises(ValueError, match='duplicate'):
        restored.load_state_dict({'keys': torch.tensor([3, 3])})
    voxel_hash.reset()
    assert voxel_hash.num_slots == 0
    assert bool((voxel_hash.lookup(keys) == -1).all())
    assert voxel_hash.insert(keys[:1]).tolist() == [0]


@pytest.mark.parametrize('mode', MODES)
def test_crowded_table_keeps_displacement_bounded_and_answers_like_a_dict(mode):
    device, sync_free = mode
    # Load 0.9 makes long probe runs likely: the table must grow instead of letting a key
    # drift past the lookup window, and lookups still find every key.
    generator = torch.Generator().manual_seed(3)
    voxel_hash = VoxelHash(device, initial_capacity=64, max_load=0.9,
                           sync_free=sync_free)
    reference = {}
    for _ in range(20):
        keys = pack_keys(torch.randint(-60, 60, (4000, 3), generator=generator))
        slots = voxel_hash.insert(keys.to(device))
        assert slots.tolist() == _reference_insert(reference, keys)
        assert 1 <= voxel_hash.window <= 64
    everything = torch.tensor(list(reference), dtype=torch.int64)
    assert voxel_hash.lookup(everything.to(device)).tolist() == list(range(len(reference)))
    assert voxel_hash.num_slots == len(reference) <= 0.9 * voxel_hash.table_size


@pytest.mark.parametrize('mode', MODES)
def test_table_grows_when_a_key_would_drift_past_the_displacement_bound(mode, monkeypatch):
    device, sync_free = mode
    monkeypatch.setattr(voxel_hash_module, '_MAX_DISPLACEMENT', 3)
    generator = torch.Generator().manual_seed(4)
    voxel_hash = VoxelHash(device, initial_capacity=1 << 10, max_load=0.9, sync_free=sync_free)
    reference = {}
    keys = pack_keys(torch.randint(-50, 50, (900, 3), generator=generator))
    assert voxel_hash.insert(keys.to(device)).tolist() == _reference_insert(reference, keys)
    # 900 keys fit 1024 buckets by load, not by a displacement of at most 2.
    assert voxel_hash.table_size > 1024
    assert voxel_hash.window <= 3
    everything = torch.tensor(list(reference), dtype=torch.int64)
    assert voxel_hash.lookup(everything.to(device)).tolist() == list(range(len(reference)))


@pytest.mark.parametrize('mode', MODES)
def test_lookup_scans_only_the_window_the_inserts_needed(mode):
    device, sync_free = mode
    voxel_hash = VoxelHash(device, initial_capacity=1 << 12, sync_free=sync_free)
    keys = pack_keys(torch.arange(3000)[:, None].expand(-1, 3) * torch.tensor([1, 7, 13]))
    voxel_hash.insert(keys.to(device))
    mask = voxel_hash.table_size - 1
    # Every stored key sits within `window` buckets of its home bucket, and one key sits at
    # the largest displacement (the window is no wider than needed).
    table_keys = voxel_hash._table_keys[:-1].cpu()
    buckets = torch.nonzero(table_keys >= 0).squeeze(1)
    displacement = (buckets - voxel_hash_module._hash(table_keys[buckets], mask)) & mask
    assert buckets.numel() == 3000
    assert int(displacement.max()) + 1 == voxel_hash.window


@pytest.mark.parametrize('device', DEVICES)
def test_graph_replayed_inserts_match_eager_ones_through_growth(device):
    generator = torch.Generator().manual_seed(7)
    replayed = VoxelHash(device, initial_capacity=64, sync_free=True, use_graphs=True)
    eager = VoxelHash(device, initial_capacity=64, sync_free=True, use_graphs=False)
    windows = set()
    for step in range(36):
        # Two input shapes (like a frame's pixels and a keyframe's lifted keys), the
        # second with extra values read in the insert's sync.
        size = 4096 if step % 2 == 0 else 1024
        if step < 12 or step in (24, 25):  # the table grows, its window changes
            reach = 40 + 3 * step
            keys = pack_keys(torch.randint(-reach, reach, (size, 3),
                                           generator=generator)).to(device)
        else:  # keys seen before: the graphs are replayed
            stored = eager.keys.cpu()
            keys = stored[torch.randint(0, stored.numel(), (size,), generator=generator)]
            keys = keys.to(device)
        valid = (torch.rand(size, generator=generator) < 0.8).to(device)
        extra = None if step % 2 == 0 else torch.arange(step, step + 3, device=device)
        slots, extra_values = replayed.insert_reading(keys, valid, extra)
        expected_slots, expected_extra = eager.insert_reading(keys, valid, extra)
        assert torch.equal(slots, expected_slots)
        assert extra_values == expected_extra
        windows.add(replayed.window)
    assert torch.equal(replayed.keys, eager.keys)
    probe = pack_keys(torch.randint(-80, 80, (5000, 3), generator=generator)).to(device)
    assert torch.equal(replayed.lookup(probe), eager.lookup(probe))
    # Both shapes were captured, dropped when the table grew at steps 24-25 (a replay
    # would have written the former table), and captured again.
    assert len(windows) > 1
    assert replayed.graph_stats['captures'] == 4 and replayed.graph_stats['replays'] >= 16
    assert eager.graph_stats == {'replays': 0, 'captures': 0}


def test_a_failed_graph_capture_warns_and_inserts_without_graphs(monkeypatch):
    def failing_capture(*args, **kwargs):
        raise RuntimeError('operation not permitted when stream is capturing')

    monkeypatch.setattr(voxel_hash_module, '_InsertGraph', failing_capture)
    replayed = VoxelHash('cpu', sync_free=True, use_graphs=True)
    eager = VoxelHash('cpu', sync_free=True, use_graphs=False)
    generator = torch.Generator().manual_seed(9)
    keys = pack_keys(torch.randint(-20, 20, (3000, 3), generator=generator))
    assert torch.equal(replayed.insert(keys), eager.insert(keys))  # the eager warm-up call
    with pytest.warns(RuntimeWarning, match='capture failed'):
        slots = replayed.insert(keys.flip(0))
    assert torch.equal(slots, eager.insert(keys.flip(0)))
    assert not replayed.use_graphs and replayed.graph_stats['captures'] == 0
    more = pack_keys(torch.randint(-30, 30, (3000, 3), generator=generator))
    assert torch.equal(replayed.insert(more), eager.insert(more))
    assert torch.equal(replayed.keys, eager.keys)
