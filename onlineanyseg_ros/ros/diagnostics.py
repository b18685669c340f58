"""Diagnostics for the nodes: stage latencies, counters and a throttled log line.

``NodeDiagnostics`` owns the ``diagnostics`` publisher and a per-kind throttled warning
(``warn_once_per``): bad input is logged clearly but never floods the console, and every skip
is counted in the same place the diagnostics report from.
"""

from collections import Counter
import threading
import time
from typing import Dict, Mapping, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

from onlineanyseg_ros.ros.conversions.header import ns_to_time
from onlineanyseg_ros.ros.qos import diagnostics_qos


class NodeDiagnostics:
    """Counted skips, throttled warnings and a periodic DiagnosticArray for one node.

    Args:
        node: the owning node (its logger and clock are used).
        name: status name, e.g. ``'onlineanyseg: segmentation'``.
        warn_period_s: the same kind of warning is logged at most once per this period.

    """

    def __init__(self, node: Node, name: str, warn_period_s: float = 10.0):
        self._node = node
        self._name = name
        self._warn_period_s = warn_period_s
        self._last_warned: Dict[str, float] = {}
        self.counters: Counter = Counter()
        self._lock = threading.Lock()  # input and processing callbacks may skip concurrently
        self._publisher = node.create_publisher(DiagnosticArray, 'diagnostics', diagnostics_qos())

    def skip(self, kind: str, message: str) -> None:
        """Count one skipped input of ``kind`` and log ``message`` (throttled per kind)."""
        now = time.monotonic()
        with self._lock:
            self.counters[kind] += 1
            total = self.counters[kind]
            warn = now - self._last_warned.get(kind, -1e18) >= self._warn_period_s
            if warn:
                self._last_warned[kind] = now
        if warn:
            self._node.get_logger().warning(f'{message} (skipped, {total} so far: {kind})')

    def publish(self, stages_ms: Mapping[str, Mapping[str, float]],
                values: Optional[Mapping[str, object]] = None, level: int = 0,
                message: str = 'ok') -> DiagnosticArray:
        """Publish one status with per-stage p50/p95 latencies, counters and ``values``."""
        status = DiagnosticStatus(level=bytes([level]), name=self._name, message=message,
                                  hardware_id=self._node.get_fully_qualified_name())
        pairs = []
        for stage, summary in sorted(stages_ms.items()):
            for key in ('p50_ms', 'p95_ms', 'count'):
                if key in summary:
                    pairs.append((f'{stage}.{key}', summary[key]))
        pairs += sorted((f'skipped.{kind}', count) for kind, count in self.counters.items())
        pairs += sorted((values or {}).items())
        status.values = [KeyValue(key=str(key), value=_format(value)) for key, value in pairs]
        array = DiagnosticArray(status=[status])
        array.header.stamp = ns_to_time(self._node.get_clock().now().nanoseconds)
        self._publisher.publish(array)
        return array


def _format(value: object) -> str:
    """Format a diagnostic value compactly."""
    if isinstance(value, float):
        return f'{value:.3f}'
    return str(value)
