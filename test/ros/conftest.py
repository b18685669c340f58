"""rclpy fixtures for the ROS-side tests; DDS stays on loopback in a random domain.

The environment is set when this file is imported, before any test can call rclpy.init,
and is inherited by node subprocesses that tests start.
"""

import os
import random
import time

import pytest

# Discovery must not multicast off the machine, and parallel runs must not see each other.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ['ROS_DOMAIN_ID'] = str(random.randint(1, 200))

# Discovery usually takes 0.1-0.2 s but sometimes ~3.2 s: wait for events, never sleep.
DISCOVERY_TIMEOUT_S = 15.0


@pytest.fixture
def rclpy_context():
    """Yield an initialised rclpy Context of its own, shut down after the test."""
    rclpy = pytest.importorskip('rclpy')
    context = rclpy.context.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


@pytest.fixture
def make_node(rclpy_context):
    """Return a factory of nodes in the test context (same arguments as rclpy.create_node).

    The nodes are destroyed after the test.
    """
    import rclpy
    nodes = []

    def create(name, **kwargs):
        node = rclpy.create_node(name, context=rclpy_context, **kwargs)
        nodes.append(node)
        return node

    yield create
    for node in nodes:
        node.destroy_node()


@pytest.fixture
def spin_until(rclpy_context):
    """Return a helper that spins nodes until a predicate holds or a timeout passes.

    Call it as ``spin_until([node, ...], predicate, timeout_s)``; it returns the final value
    of ``predicate()``, so tests assert on it.
    """
    from rclpy.executors import SingleThreadedExecutor
    executor = SingleThreadedExecutor(context=rclpy_context)

    def spin(nodes, predicate, timeout_s=DISCOVERY_TIMEOUT_S):
        for node in nodes:
            executor.add_node(node)
        deadline = time.monotonic() + timeout_s
        try:
            while not predicate() and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.05)
        finally:
            for node in nodes:
                executor.remove_node(node)
        return bool(predicate())

    yield spin
    executor.shutdown()
