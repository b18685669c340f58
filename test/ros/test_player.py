"""The rclpy bag player over real DDS: exact bytes, /clock, latched /tf_static, skipped types."""

import importlib.util
import os
from pathlib import Path
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.executors import SingleThreadedExecutor  # noqa: E402, I202
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rosbags.rosbag2 import Writer  # noqa: E402
from rosbags.typesys import get_types_from_msg  # noqa: E402

from onlineanyseg_ros.core.types import MaskObservation, RgbdFrame  # noqa: E402
from onlineanyseg_ros.data import bag  # noqa: E402
from onlineanyseg_ros.ros.player import (BagPlayer, qos_from_profiles,  # noqa: E402
                                         resolve_message_class)

# Only loopback networking here: discovery must stay on localhost (set before rclpy.init).
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
HAS_TF2_MSGS = importlib.util.find_spec('tf2_msgs') is not None
TF_TOPICS = ('/tf', '/tf_static')
REPO_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 15.0
RELIABLE_DEEP = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope='module')
def context():
    context = rclpy.context.Context()
    rclpy.init(context=context, domain_id=random.randint(1, 200))
    yield context
    rclpy.shutdown(context=context)


@pytest.fixture(scope='module')
def sequence_bag(tmp_path_factory):
    rng = np.random.default_rng(3)
    K = np.array([[10.0, 0.0, 4.5], [0.0, 10.0, 3.5], [0.0, 0.0, 1.0]])
    frames = []
    for index in range(3):
        T = np.eye(4)
        T[:3, 3] = [0.1 * index, 0.0, 0.0]
        frames.append(RgbdFrame(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8),
                                rng.uniform(0.5, 2.0, (8, 10)).astype(np.float32), K, T,
                                frame_index=index))
    path = tmp_path_factory.mktemp('player') / 'seq'

    def masks(frame):
        if frame.frame_index:
            return None
        return MaskObservation(np.ones((8, 10), np.int32), np.ones((1, 4), np.float32))

    bag.write_sequence_bag(frames, path, storage='mcap', layout=bag.BagLayout(rate_hz=20.0),
                           keyframe_masks=masks, progress=False)
    return path


def recorded(path, topics):
    expected = {topic: [] for topic in topics}
    for topic, _, _, data in bag.read_bag(path, topics=list(topics)):
        expected[topic].append(data)
    return expected


class RawRecorder:
    """Raw (bytes) subscriptions on a set of topics, each with its recorded type."""

    def __init__(self, node, topic_types, latched=()):
        self.received = {topic: [] for topic in topic_types}
        for topic, msgtype in topic_types.items():
            node.create_subscription(resolve_message_class(msgtype), topic,
                                     lambda data, t=topic: self.received[t].append(data),
                                     LATCHED if topic in latched else RELIABLE_DEEP, raw=True)


class RecordingLogger:
    def __init__(self):
        self.warnings = []

    def warning(self, message, **_):
        self.warnings.append(message)

    def info(self, message, **_):
        pass


def spin_until(executor, predicate, timeout_s=DEADLINE_S):
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.02)
    return predicate()


def make_nodes(context, name):
    executor = SingleThreadedExecutor(context=context)
    nodes = [rclpy.create_node(f'{name}_{role}', context=context) for role in ('player', 'sub')]
    for node in nodes:
        executor.add_node(node)
    return executor, nodes


def destroy(executor, nodes, player=None):
    if player is not None:
        player.close()
    executor.shutdown()
    for node in nodes:
        node.destroy_node()


def test_resolve_message_class():
    from sensor_msgs.msg import Image
    assert resolve_message_class('sensor_msgs/msg/Image') is Image
    assert resolve_message_class('sensor_msgs/Image') is Image
    assert resolve_message_class('sensor_msgs/msg/NoSuchType') is None
    assert resolve_message_class('no_such_pkg_msgs/msg/Thing') is None
    assert resolve_message_class('garbage') is None


def test_qos_from_recorded_profiles():
    latched = qos_from_profiles([bag.LATCHED_QOS])
    assert latched.durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert latched.reliability == ReliabilityPolicy.RELIABLE and latched.depth == 1
    stream = qos_from_profiles([bag.STREAM_QOS, bag.LATCHED_QOS])
    assert stream.durability == DurabilityPolicy.VOLATILE and stream.depth == 10
    best_effort = bag._qos(reliable=False, transient_local=False, depth=5)
    assert qos_from_profiles([bag.STREAM_QOS, best_effort]).reliability == \
        ReliabilityPolicy.BEST_EFFORT
    assert qos_from_profiles([]).reliability == ReliabilityPolicy.RELIABLE


def test_plays_every_message_with_identical_bytes(context, sequence_bag):
    info = bag.bag_info(sequence_bag)
    topic_types = {t: v['type'] for t, v in info['topics'].items() if t not in TF_TOPICS}
    expected = recorded(sequence_bag, topic_types)
    executor, (player_node, sub_node) = make_nodes(context, 'bytes')
    recorder = RawRecorder(sub_node, topic_types)
    player = BagPlayer(player_node, sequence_bag, rate=4.0, topics=list(topic_types),
                       wait_for_subscribers=len(topic_types), wait_timeout_s=DEADLINE_S)
    try:
        player.start()  # in-process: a timer of the player node drives step()
        assert spin_until(executor, lambda: player.finished and all(
            len(recorder.received[t]) >= len(expected[t]) for t in expected))
        assert recorder.received == expected
        assert player.published == {t: len(v) for t, v in expected.items()}
        assert player.loops == 1 and not player.skipped_topics
    finally:
        destroy(executor, [player_node, sub_node], player)


@pytest.mark.skipif(not HAS_TF2_MSGS, reason='tf2_msgs is not importable in this rclpy')
def test_tf_played_and_tf_static_latched(context, sequence_bag):
    topic_types = dict.fromkeys(TF_TOPICS, 'tf2_msgs/msg/TFMessage')
    expected = recorded(sequence_bag, TF_TOPICS)
    executor, (player_node, sub_node) = make_nodes(context, 'tf')
    recorder = RawRecorder(sub_node, topic_types, latched=('/tf_static',))
    player = BagPlayer(player_node, sequence_bag, rate=4.0, topics=list(TF_TOPICS),
                       wait_for_subscribers=2, wait_timeout_s=DEADLINE_S)
    late_node = None
    try:
        player.start()
        assert spin_until(executor, lambda: player.finished and len(
            recorder.received['/tf']) >= len(expected['/tf']))
        assert recorder.received['/tf'] == expected['/tf']
        # A subscriber that joins after playback still gets /tf_static: it is offered
        # transient-local, as recorded in the bag metadata.
        late_node = rclpy.create_node('tf_late', context=context)
        executor.add_node(late_node)
        late = RawRecorder(late_node, {'/tf_static': 'tf2_msgs/msg/TFMessage'},
                           latched=('/tf_static',))
        assert spin_until(executor, lambda: late.received['/tf_static'])
        assert late.received['/tf_static'] == expected['/tf_static']
    finally:
        destroy(executor, [n for n in (player_node, sub_node, late_node) if n], player)


def test_clock_published_only_when_asked(context, sequence_bag):
    from rosgraph_msgs.msg import Clock
    executor, (player_node, sub_node) = make_nodes(context, 'clock')
    silent = BagPlayer(player_node, sequence_bag, topics=['/camera/pose'])
    assert player_node.count_publishers('/clock') == 0
    silent.close()
    clocks, poses = [], []
    sub_node.create_subscription(Clock, '/clock', lambda m: clocks.append(
        m.clock.sec * 10 ** 9 + m.clock.nanosec), RELIABLE_DEEP)
    sub_node.create_subscription(resolve_message_class('geometry_msgs/msg/PoseStamped'),
                                 '/camera/pose', poses.append, RELIABLE_DEEP)
    player = BagPlayer(player_node, sequence_bag, rate=2.0, clock=True,
                       topics=['/camera/pose'], wait_for_subscribers=2,
                       wait_timeout_s=DEADLINE_S)
    stamps = [stamp for _, _, stamp, _ in bag.read_bag(sequence_bag, topics=['/camera/pose'])]
    try:
        # play() blocks, as in the CLI; this thread spins the subscriber meanwhile.
        thread = threading.Thread(target=player.play)
        thread.start()
        assert spin_until(executor, lambda: not thread.is_alive() and len(poses) == 3)
        assert player_node.count_publishers('/clock') == 1
        assert spin_until(executor, lambda: clocks and clocks[-1] >= stamps[-1])
        assert clocks == sorted(clocks) and clocks[0] >= stamps[0]
        # Bag time advances at 2x wall time: 0.1 s of bag takes ~0.05 s, so several ticks.
        assert len(clocks) >= 2
    finally:
        destroy(executor, [player_node, sub_node], player)


def write_custom_type_bag(path):
    typestore = bag.default_typestore()
    typestore.register(get_types_from_msg('int32 value', 'onlineanyseg_missing_msgs/msg/Thing'))
    thing_type = typestore.types['onlineanyseg_missing_msgs/msg/Thing']
    string_type = typestore.types['std_msgs/msg/String']
    with Writer(path, version=9) as writer:
        thing = writer.add_connection('/thing', 'onlineanyseg_missing_msgs/msg/Thing',
                                      typestore=typestore)
        chatter = writer.add_connection('/chatter', 'std_msgs/msg/String', typestore=typestore)
        for index in range(3):
            stamp = 10 ** 9 + index * 10 ** 7
            writer.write(thing, stamp, typestore.serialize_cdr(thing_type(value=index),
                                                               thing_type.__msgtype__))
            writer.write(chatter, stamp, typestore.serialize_cdr(
                string_type(data=f'hello {index}'), string_type.__msgtype__))


def test_unknown_type_skipped_with_one_warning(context, tmp_path):
    path = tmp_path / 'custom'
    write_custom_type_bag(path)
    expected = recorded(path, ['/chatter'])
    executor, (player_node, sub_node) = make_nodes(context, 'unknown')
    logger = RecordingLogger()
    player_node.get_logger = lambda: logger
    recorder = RawRecorder(sub_node, {'/chatter': 'std_msgs/msg/String'})
    player = BagPlayer(player_node, path, rate=5.0, loop=True, wait_for_subscribers=1,
                       wait_timeout_s=DEADLINE_S)
    try:
        player.start()
        assert spin_until(executor, lambda: player.loops >= 3 and len(
            recorder.received['/chatter']) >= 9)
        assert player.skipped_topics == {'/thing': 'onlineanyseg_missing_msgs/msg/Thing'}
        assert list(player.published) == ['/chatter']
        assert [w for w in logger.warnings if '/thing' in w] == logger.warnings
        assert len(logger.warnings) == 1  # once, not once per loop
        assert recorder.received['/chatter'][:9] == expected['/chatter'] * 3
    finally:
        destroy(executor, [player_node, sub_node], player)


def test_wait_for_subscribers_gives_up_at_deadline(context, tmp_path):
    path = tmp_path / 'alone'
    write_custom_type_bag(path)
    node = rclpy.create_node('alone_player', context=context)
    logger = RecordingLogger()
    node.get_logger = lambda: logger
    player = BagPlayer(node, path, rate=10.0, topics=['/chatter'], wait_for_subscribers=3,
                       wait_timeout_s=0.2)
    try:
        assert player.play() == 3 and player.finished
        assert any('playing anyway' in w for w in logger.warnings)
    finally:
        player.close()
        node.destroy_node()


def test_play_command_runs_as_a_process(tmp_path):
    path = tmp_path / 'cli'
    write_custom_type_bag(path)
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               ROS_DOMAIN_ID=str(random.randint(1, 200)), PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [sys.executable, '-m', 'onlineanyseg_ros.cli', 'play', str(path), '--rate', '10',
         '--topics', '/chatter', '/missing'], env=env, capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 0, result.stderr
    assert '/chatter: 3' in result.stdout and 'published 3 messages' in result.stdout
    assert '/missing is not in the bag' in result.stderr
