"""`onlineanyseg pipeline`: the perception and segmentation nodes in one process."""

import argparse
from typing import List


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `pipeline` subcommand."""
    parser = subparsers.add_parser(
        'pipeline', help='run the perception and segmentation nodes in one process',
        description='Starts both ROS 2 nodes in one MultiThreadedExecutor until Ctrl-C. The '
                    'parameter file applies to both (sections perception_node: and '
                    'segmentation_node:); anything after -- is passed on as ROS arguments, '
                    'e.g. -- -r color/image:=/camera/color/image_raw. On machines without '
                    'ROS networking set ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST.')
    parser.add_argument('--params-file', metavar='YAML',
                        help='ROS 2 parameter file for both nodes')
    parser.add_argument('ros_args', nargs=argparse.REMAINDER, metavar='-- ROS_ARGS',
                        help='ROS arguments (remaps, log levels, ...); a -p override '
                             'reaches both nodes, so prefer the parameter file')
    parser.set_defaults(func=run_pipeline)


def ros_argv(params_file: str, ros_args: List[str]) -> List[str]:
    """Return the rclpy command line (program name first) for the given options."""
    extra = list(ros_args)
    if extra[:1] == ['--']:
        extra = extra[1:]
    if extra[:1] == ['--ros-args']:
        extra = extra[1:]
    argv = ['onlineanyseg-pipeline', '--ros-args']
    if params_file:
        argv += ['--params-file', params_file]
    return argv + extra


def run_pipeline(args: argparse.Namespace) -> int:
    """Entry point of `onlineanyseg pipeline`: spin both nodes, return the exit code."""
    from onlineanyseg_ros.ros.pipeline import main
    return main(ros_argv(args.params_file or '', args.ros_args))
