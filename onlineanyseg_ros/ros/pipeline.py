"""Perception and segmentation nodes in one process and one MultiThreadedExecutor.

The keyframe bundles then travel between the nodes through rclpy's intra-process path of one
context (still real topics: RViz, ``ros2 topic echo`` and bag recorders see them). Each node
runs its processing in its own mutually exclusive group and its input callbacks in another,
so 2D inference and 3D integration overlap and inputs are queued while both work.
``--ros-args --params-file F`` applies to both nodes: each reads its own section
(``perception_node:`` / ``segmentation_node:``).

Run: ``python -m onlineanyseg_ros.ros.pipeline --ros-args --params-file F``.
"""

import sys
from typing import Callable, List, Optional, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation
from rclpy.node import Node

from onlineanyseg_ros.perception.cropformer import CropFormerUnavailable
from onlineanyseg_ros.ros.params import ConfigError


# GIL switch interval of node processes (Python's default is 5 ms). A node's processing
# thread runs many short torch ops that each release the GIL; with the default, an input
# thread deserialising a multi-megabyte message holds it up to 5 ms per op (convoy effect).
# Segmentation node over DDS on 2 CPU cores: 1.27-1.36 keyframes/s with 5 ms, 1.51-1.53 with
# 0.5 ms, 1.48-1.60 single-threaded.
GIL_SWITCH_INTERVAL_S = 0.0005


class NodeStartError(RuntimeError):
    """A node cannot start (e.g. a model failed to load); the message says why."""


# Errors that end the start-up with one line on stderr and exit status 1, no stack trace.
STARTUP_ERRORS = (ConfigError, NodeStartError, CropFormerUnavailable)


def run_nodes(factories: Sequence[Callable[[], Node]],
              argv: Optional[List[str]] = None) -> int:
    """Init rclpy with ``argv``, build the nodes, spin until Ctrl-C / SIGTERM; return status.

    The executor is multi-threaded even for one node: each node takes its inputs in a
    callback group of their own, so they are queued (bounded, counted) while the node
    processes, instead of waiting in keep-last DDS queues that overwrite them unseen.

    ``argv`` is a full command line (program name first, ROS arguments after
    ``--ros-args``); None means ``sys.argv``. Malformed ROS arguments or a start-up error
    (``STARTUP_ERRORS``) print one line and return 1.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        rclpy.init(args=argv)
    except rclpy_implementation.RCLError as error:
        print(f'onlineanyseg: invalid ROS arguments: {error}', file=sys.stderr)
        return 1
    nodes: List[Node] = []
    try:
        try:
            for factory in factories:
                nodes.append(factory())
        except STARTUP_ERRORS as error:
            print(f'onlineanyseg: {error}', file=sys.stderr)
            return 1
        # One thread per node's processing group plus one per input group, so inputs are
        # drained even while every node is busy.
        executor = MultiThreadedExecutor(num_threads=2 * len(nodes))
        for node in nodes:
            executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except rclpy_implementation.RCLError:
            # rclpy's signal handler may invalidate the context while the executor builds
            # its wait set (ros2/rclpy#398); that is a normal shutdown, anything else is not.
            if rclpy.ok():
                raise
        finally:
            executor.shutdown()
    finally:
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the perception and segmentation nodes together; return the exit code."""
    from onlineanyseg_ros.ros.perception_node import PerceptionNode
    from onlineanyseg_ros.ros.segmentation_node import SegmentationNode
    return run_nodes([PerceptionNode, SegmentationNode], argv)


if __name__ == '__main__':
    sys.exit(main())
