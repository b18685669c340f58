"""Replay a rosbag2 bag through rclpy, for machines without ``ros2 bag play``.

Recorded CDR bytes are published as they are (``publisher.publish(bytes)``), never
re-serialised, at the recorded timing scaled by ``rate``. Each topic is offered with the QoS
recorded in the bag metadata (so ``/tf_static`` stays transient-local, i.e. latched); topics
whose message type this rclpy cannot import are skipped with one warning each.

``BagPlayer`` works two ways: ``play()`` blocks until the bag is done (the CLI), while
``start()`` drives ``step()`` from a node timer so the player runs inside an executor next to
other nodes (the in-process demo).
"""

import importlib
import os
from pathlib import Path
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)
from rosbags.interfaces import QosDurability, QosHistory, QosReliability
from rosbags.rosbag2 import Reader

CLOCK_TOPIC = '/clock'
DEFAULT_DEPTH = 10


def resolve_message_class(msgtype: str) -> Optional[type]:
    """Return the rclpy class of 'pkg/msg/Name' (or 'pkg/Name'), None when not importable."""
    parts = msgtype.split('/')
    if len(parts) == 2:
        parts = [parts[0], 'msg', parts[1]]
    if len(parts) != 3 or not all(parts):
        return None
    package, kind, name = parts
    try:
        module = importlib.import_module(f'{package}.{kind}')
    except ImportError:
        return None
    message_class = getattr(module, name, None)
    return message_class if isinstance(message_class, type) else None


def qos_from_profiles(profiles: Sequence[Any]) -> QoSProfile:
    """Return the QoS to offer for rosbags ``Qos`` profiles recorded from one topic.

    Like ``ros2 bag play``: reliable / transient-local only when every recorded publisher
    offered it (a reliable subscriber would get nothing from a best-effort one otherwise);
    keep-last with the largest recorded depth; reliable keep-last 10 when nothing was recorded.
    """
    if not profiles:
        return QoSProfile(depth=DEFAULT_DEPTH, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    reliable = all(p.reliability == QosReliability.RELIABLE for p in profiles)
    latched = all(p.durability == QosDurability.TRANSIENT_LOCAL for p in profiles)
    keep_all = any(p.history == QosHistory.KEEP_ALL for p in profiles)
    return QoSProfile(
        history=HistoryPolicy.KEEP_ALL if keep_all else HistoryPolicy.KEEP_LAST,
        depth=max([p.depth for p in profiles] + [1]),
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


class BagPlayer:
    """Publish a bag's messages from ``node`` at recorded timing / ``rate``.

    Attributes:
        published: ``{topic: messages published}``.
        skipped_topics: ``{topic: msgtype}`` not played because the type is not importable.
        loops: completed passes over the bag.

    """

    def __init__(self, node: Node, path: os.PathLike, rate: float = 1.0, loop: bool = False,
                 clock: bool = False, topics: Optional[Sequence[str]] = None,
                 wait_for_subscribers: int = 0, wait_timeout_s: float = 10.0,
                 clock_hz: float = 40.0) -> None:
        """Open the bag, create one publisher per playable topic (and /clock when asked).

        ``wait_for_subscribers`` N > 0 holds playback until the played topics (and /clock)
        have at least N matched subscriptions in total, or ``wait_timeout_s`` passes (then it
        warns and plays anyway). ``clock_hz`` is the /clock rate while no message is due.
        """
        if not rate > 0.0:
            raise ValueError(f'rate must be > 0, got {rate}')
        if wait_for_subscribers < 0 or wait_timeout_s < 0 or not clock_hz > 0:
            raise ValueError('wait_for_subscribers, wait_timeout_s must be >= 0, clock_hz > 0')
        self._node, self._rate, self._loop = node, rate, loop
        self._wait_count, self._wait_timeout_s = wait_for_subscribers, wait_timeout_s
        self._clock_period_s = 1.0 / clock_hz
        self._reader = Reader(Path(path))
        self._reader.open()
        self.published: Dict[str, int] = {}
        self.skipped_topics: Dict[str, str] = {}
        self.loops = 0
        self._publishers: Dict[str, Any] = {}
        self._connections = self._create_publishers(topics)
        self._clock_publisher = None
        self._time_class = None
        if clock:
            self._create_clock_publisher()
        self._messages: Optional[Iterator[Tuple[Any, int, bytes]]] = None
        self._next: Optional[Tuple[Any, int, bytes]] = None
        self._wait_started: Optional[float] = None
        self._wall_start: Optional[float] = None
        self._bag_start = self._reader.start_time if self._reader.message_count else 0
        self._last_clock_wall = -float('inf')
        self._finished = threading.Event()
        self._timer = None

    def _create_publishers(self, topics: Optional[Sequence[str]]) -> List[Any]:
        log = self._node.get_logger()
        available = {c.topic for c in self._reader.connections}
        for missing in sorted(set(topics or ()) - available):
            log.warning(f'topic {missing} is not in the bag')
        connections = []
        for connection in self._reader.connections:
            if topics is not None and connection.topic not in topics:
                continue
            if connection.topic in self.skipped_topics:
                continue
            if connection.topic not in self._publishers:
                message_class = resolve_message_class(connection.msgtype)
                if message_class is None:
                    log.warning(f'skipping {connection.topic}: message type '
                                f'{connection.msgtype} is not importable in this rclpy')
                    self.skipped_topics[connection.topic] = connection.msgtype
                    continue
                profiles = [p for c in self._reader.connections if c.topic == connection.topic
                            for p in getattr(c.ext, 'offered_qos_profiles', [])]
                self._publishers[connection.topic] = self._node.create_publisher(
                    message_class, connection.topic, qos_from_profiles(profiles))
                self.published[connection.topic] = 0
            connections.append(connection)
        return connections

    def _create_clock_publisher(self) -> None:
        clock_class = resolve_message_class('rosgraph_msgs/msg/Clock')
        self._time_class = resolve_message_class('builtin_interfaces/msg/Time')
        if clock_class is None or self._time_class is None:
            raise RuntimeError('--clock needs rosgraph_msgs and builtin_interfaces '
                               '(pip install ros-rosgraph-msgs)')
        # Reliable reaches both the best-effort clock subscribers of rclcpp/rclpy and others.
        self._clock_publisher = self._node.create_publisher(
            clock_class, CLOCK_TOPIC, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))

    @property
    def finished(self) -> bool:
        """Return True once the bag has been played (never while looping)."""
        return self._finished.is_set()

    def subscription_count(self) -> int:
        """Return the matched subscriptions summed over the played topics and /clock."""
        publishers = list(self._publishers.values()) + [self._clock_publisher]
        return sum(p.get_subscription_count() for p in publishers if p is not None)

    def _ready(self, now: float) -> bool:
        if self._wall_start is not None:
            return True
        if self._wait_count:
            if self._wait_started is None:
                self._wait_started = now
            if self.subscription_count() < self._wait_count:
                if now - self._wait_started < self._wait_timeout_s:
                    return False
                self._node.get_logger().warning(
                    f'only {self.subscription_count()} of {self._wait_count} subscriptions '
                    f'matched after {self._wait_timeout_s:.1f} s; playing anyway')
        self._restart(now)
        return True

    def _restart(self, now: float) -> None:
        # rosbags reads every topic when given no connection: play none instead.
        self._messages = (self._reader.messages(connections=self._connections)
                          if self._connections else iter(()))
        self._next = next(self._messages, None)
        self._wall_start = now

    def step(self) -> bool:
        """Publish every message that is due now; return False once playback is finished."""
        if self._finished.is_set():
            return False
        now = time.monotonic()
        if not self._ready(now):
            return True
        bag_now = self._bag_start + round((now - self._wall_start) * self._rate * 1e9)
        due = self._next is not None and self._next[1] <= bag_now
        if self._clock_publisher is not None and (
                due or now - self._last_clock_wall >= self._clock_period_s):
            self._publish_clock(bag_now, now)
        while self._next is not None and self._next[1] <= bag_now:
            connection, _, data = self._next
            self._publishers[connection.topic].publish(bytes(data))
            self.published[connection.topic] += 1
            self._next = next(self._messages, None)
        if self._next is None:
            self.loops += 1
            if not self._loop or not self._connections:
                self._finished.set()
                return False
            self._restart(now)
        return True

    def _publish_clock(self, bag_now_ns: int, wall_now: float) -> None:
        seconds, nanoseconds = divmod(bag_now_ns, 10 ** 9)
        message = self._clock_publisher.msg_type()
        message.clock = self._time_class(sec=seconds, nanosec=nanoseconds)
        self._clock_publisher.publish(message)
        self._last_clock_wall = wall_now

    def seconds_until_next(self) -> float:
        """Return wall seconds until the next message is due (0 when due or waiting)."""
        if self._wall_start is None or self._next is None:
            return 0.0
        due = self._wall_start + (self._next[1] - self._bag_start) / 1e9 / self._rate
        return max(0.0, due - time.monotonic())

    def play(self, poll_s: float = 0.05) -> int:
        """Play until finished (forever with ``loop``); return the messages published."""
        while self.step():
            pause = self.seconds_until_next() if self._wall_start is not None else poll_s
            if self._clock_publisher is not None:
                pause = min(pause, self._clock_period_s)
            time.sleep(min(pause, poll_s))
        return sum(self.published.values())

    def start(self, period_s: float = 0.005) -> None:
        """Drive ``step()`` from a timer of the node (runs inside the node's executor)."""
        if self._timer is None:
            self._timer = self._node.create_timer(period_s, self._on_timer)

    def _on_timer(self) -> None:
        if not self.step() and self._timer is not None:
            self._timer.cancel()

    def wait(self, timeout_s: Optional[float] = None) -> bool:
        """Block until playback finishes (another thread spins); return True when it did."""
        return self._finished.wait(timeout_s)

    def close(self) -> None:
        """Stop the timer, destroy the publishers and close the bag."""
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None
        for publisher in list(self._publishers.values()) + [self._clock_publisher]:
            if publisher is not None:
                self._node.destroy_publisher(publisher)
        self._publishers.clear()
        self._clock_publisher = None
        self._reader.close()
