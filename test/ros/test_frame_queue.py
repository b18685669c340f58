"""Colour/depth pairing, pose waiting and exact-stamp joining (ROS-free)."""

import numpy as np
import pytest

from onlineanyseg_ros.ros.frame_queue import (ExactStampJoiner, FrameQueue, FrameQueueConfig,
                                              TimeJump)

MS = 1_000_000
IDENTITY = np.eye(4)


def _queue(**overrides):
    values = {'pair_tolerance_ns': 5 * MS, 'max_pending': 4, 'pose_timeout_ns': 500 * MS}
    values.update(overrides)
    queue = FrameQueue(FrameQueueConfig(**values))
    queue.set_camera_info('info')
    return queue


def _always_known(stamp_ns):
    return IDENTITY


def _pair(queue, stamp_ns, now_ns=0, color_offset_ns=0):
    queue.add_color(stamp_ns + color_offset_ns, f'c{stamp_ns}', now_ns)
    queue.add_depth(stamp_ns, f'd{stamp_ns}', now_ns)


def test_equal_stamps_pair_and_release_with_pose_and_camera_info():
    queue = _queue()
    assert queue.add_color(100 * MS, 'color', 0) is None
    assert queue.add_depth(100 * MS, 'depth', 0) is None
    queue.set_camera_info('newer info')
    poses = {100 * MS: np.diag([1.0, -1.0, -1.0, 1.0])}
    [frame] = queue.pop_ready(poses.get, now_ns=1)
    assert (frame.stamp_ns, frame.color, frame.depth, frame.camera_info) == (
        100 * MS, 'color', 'depth', 'newer info')
    assert np.array_equal(frame.T_world_camera, poses[100 * MS])
    assert len(queue) == 0 and queue.counters.paired == queue.counters.popped == 1


@pytest.mark.parametrize('offset_ns, pairs', [(5 * MS, True), (-5 * MS, True),
                                              (5 * MS + 1, False), (-5 * MS - 1, False)])
def test_tolerance_is_inclusive(offset_ns, pairs):
    queue = _queue()
    queue.add_depth(100 * MS, 'depth', 0)
    queue.add_color(100 * MS + offset_ns, 'color', 0)
    assert len(queue) == int(pairs)
    if pairs:
        assert queue.pop_ready(_always_known, 0)[0].stamp_ns == 100 * MS


def test_the_closest_counterpart_is_taken_and_the_pair_has_the_depth_stamp():
    queue = _queue()
    queue.add_color(96 * MS, 'early', 0)
    queue.add_color(102 * MS, 'close', 0)
    queue.add_depth(100 * MS, 'depth', 0)
    [frame] = queue.pop_ready(_always_known, 0)
    assert (frame.color, frame.stamp_ns) == ('close', 100 * MS)
    # 'early' can still pair with a depth up to 101 ms; a depth at 110 ms makes it unmatched.
    queue.add_depth(110 * MS, 'late depth', 0)
    assert queue.counters.unmatched_color == 1
    assert queue.counters.unmatched_depth == 0


def test_items_the_other_stream_moved_past_are_counted_unmatched():
    queue = _queue(max_pending=10)
    for stamp_ms in (10, 40, 70):
        queue.add_depth(stamp_ms * MS, stamp_ms, 0)
    queue.add_color(66 * MS, 'color', 0)
    counters = queue.counters
    assert (counters.unmatched_depth, counters.paired) == (2, 1)
    assert queue.pop_ready(_always_known, 0)[0].depth == 70


def test_full_buffers_drop_and_count_the_oldest():
    queue = _queue(max_pending=3)
    for stamp_ms in range(5):
        queue.add_color(stamp_ms * 100 * MS, stamp_ms, 0)
    assert queue.counters.dropped_full == 2
    queue = _queue(max_pending=3)
    for stamp_ms in range(5):
        _pair(queue, stamp_ms * 100 * MS)
    assert len(queue) == 3 and queue.counters.dropped_full == 2
    released = queue.pop_ready(_always_known, 0)
    assert [frame.stamp_ns for frame in released] == [200 * MS, 300 * MS, 400 * MS]


def test_time_going_backwards_clears_the_queue_and_reports_it():
    queue = _queue()
    _pair(queue, 100 * MS)
    queue.add_color(200 * MS, 'pending colour', 0)
    jump = queue.add_depth(50 * MS, 'rewound depth', 0)
    assert jump == TimeJump(stream='depth', previous_stamp_ns=100 * MS, stamp_ns=50 * MS,
                            discarded=2)
    assert len(queue) == 0
    counters = queue.counters
    assert (counters.time_jumps, counters.discarded_on_jump) == (1, 2)
    # The new timeline pairs normally and keeps the camera_info.
    assert queue.add_color(50 * MS, 'rewound colour', 0) is None
    [frame] = queue.pop_ready(_always_known, 0)
    assert (frame.color, frame.depth, frame.camera_info) == (
        'rewound colour', 'rewound depth', 'info')


def test_a_repeated_stamp_is_a_counted_duplicate_not_a_jump():
    queue = _queue()
    _pair(queue, 100 * MS)
    assert queue.add_depth(100 * MS, 'again', 0) is None
    counters = queue.counters
    assert (counters.duplicates, counters.time_jumps, len(queue)) == (1, 0, 1)


def test_frames_wait_for_their_pose_until_the_timeout():
    queue = _queue()
    _pair(queue, 100 * MS, now_ns=1_000 * MS)
    assert queue.pop_ready(lambda stamp: None, now_ns=1_500 * MS) == []
    assert len(queue) == 1
    late_poses = {100 * MS: IDENTITY}
    assert len(queue.pop_ready(late_poses.get, now_ns=1_500 * MS)) == 1
    _pair(queue, 200 * MS, now_ns=2_000 * MS)
    assert queue.pop_ready(lambda stamp: None, now_ns=2_500 * MS + 1) == []
    assert len(queue) == 0 and queue.counters.pose_timeouts == 1


def test_frames_leave_in_stamp_order_and_older_waiting_ones_are_skipped():
    queue = _queue()
    for stamp_ms in (100, 200, 300, 400):
        _pair(queue, stamp_ms * MS)
    poses = {200 * MS: IDENTITY, 300 * MS: IDENTITY}
    released = queue.pop_ready(poses.get, now_ns=0)
    assert [frame.stamp_ns for frame in released] == [200 * MS, 300 * MS]
    assert queue.counters.pose_skipped == 1
    assert len(queue) == 1  # 400 ms still waits: it is newer than every released frame


def test_invalid_poses_drop_their_frame():
    queue = _queue()
    _pair(queue, 100 * MS)
    assert queue.pop_ready(lambda stamp: np.full((4, 4), np.nan), 0) == []
    assert queue.counters.invalid_poses == 1 and len(queue) == 0


def test_nothing_leaves_before_the_first_camera_info():
    queue = FrameQueue(FrameQueueConfig(pose_timeout_ns=100 * MS))
    _pair(queue, 10 * MS, now_ns=0)
    assert queue.pop_ready(_always_known, now_ns=50 * MS) == []
    assert len(queue) == 1
    assert queue.pop_ready(_always_known, now_ns=101 * MS) == []
    assert queue.counters.camera_info_timeouts == 1 and len(queue) == 0


def test_config_is_validated():
    with pytest.raises(ValueError, match='max_pending'):
        FrameQueueConfig(max_pending=0)
    with pytest.raises(ValueError, match='pair_tolerance_ns'):
        FrameQueueConfig(pair_tolerance_ns=-1)


KEYS = ('color', 'depth', 'masks')


def test_joiner_completes_each_stamp_once_all_parts_arrived():
    joiner = ExactStampJoiner(KEYS)
    assert joiner.add('depth', 2, 'd2', 0) is None
    assert joiner.add('color', 1, 'c1', 0) is None
    assert joiner.add('masks', 2, 'm2', 0) is None
    assert joiner.add('depth', 1, 'd1', 0) is None
    bundle = joiner.add('color', 2, 'c2', 0)
    assert bundle.stamp_ns == 2 and bundle.parts == {'color': 'c2', 'depth': 'd2', 'masks': 'm2'}
    assert len(joiner) == 1 and joiner.add('masks', 1, 'm1', 0).parts['depth'] == 'd1'
    assert joiner.counters.completed == 2 and len(joiner) == 0


def test_joiner_counts_duplicates_and_rejects_unknown_keys():
    joiner = ExactStampJoiner(KEYS)
    joiner.add('color', 1, 'first', 0)
    assert joiner.add('color', 1, 'second', 0) is None
    assert joiner.counters.duplicates == 1
    joiner.add('depth', 1, 'd', 0)
    assert joiner.add('masks', 1, 'm', 0).parts['color'] == 'first'
    with pytest.raises(ValueError, match='pose'):
        joiner.add('pose', 1, 'p', 0)
    with pytest.raises(ValueError, match='unique'):
        ExactStampJoiner(('a', 'a'))


def test_joiner_is_bounded_and_drops_the_oldest_stamp():
    joiner = ExactStampJoiner(KEYS, max_pending=2)
    for stamp in (30, 10, 20):
        joiner.add('color', stamp, stamp, 0)
    assert len(joiner) == 2 and joiner.counters.dropped_full == 1
    joiner.add('depth', 20, 'd', 0)
    assert joiner.add('masks', 20, 'm', 0).parts['color'] == 20
    # Stamp 10 was dropped: its late parts start over and cannot complete it.
    assert joiner.add('depth', 10, 'd', 0) is None and joiner.add('masks', 10, 'm', 0) is None


def test_joiner_expires_incomplete_stamps_after_the_timeout():
    joiner = ExactStampJoiner(KEYS, timeout_ns=100)
    joiner.add('color', 1, 'c', now_ns=0)
    joiner.add('color', 2, 'c', now_ns=50)
    assert joiner.expire(now_ns=100) == 0
    assert joiner.expire(now_ns=101) == 1 and len(joiner) == 1
    # A later add expires on its own; stamp 2 timed out at 151.
    joiner.add('color', 3, 'c', now_ns=200)
    assert joiner.counters.expired == 2 and len(joiner) == 1


def test_joiner_expiry_ignores_entries_of_completed_stamps():
    joiner = ExactStampJoiner(('a', 'b'), timeout_ns=100)
    joiner.add('a', 1, 'a1', now_ns=0)
    joiner.add('a', 2, 'a2', now_ns=10)
    assert joiner.add('b', 1, 'b1', now_ns=20) is not None
    joiner.add('a', 1, 'late a1', now_ns=30)  # stamp 1 again, after it completed
    assert joiner.expire(now_ns=111) == 1  # stamp 2 expires although stamp 1 is fresh
    assert len(joiner) == 1
