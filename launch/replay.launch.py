"""Replay a sequence bag (``onlineanyseg bag``) through both nodes on simulated time.

Example::

    ros2 launch onlineanyseg_ros replay.launch.py bag:=scene0000_00_bag rate:=0.5 rviz:=true

``ros2 bag play`` publishes /clock and only the camera inputs, so keyframe topics recorded
in the bag do not collide with the perception node's. The remaps match the topic names
that ``onlineanyseg_ros.data.bag.BagLayout`` writes by default.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'onlineanyseg_ros'

# Bag topic of each relative node input (BagLayout defaults).
BAG_REMAPPINGS = [
    ('color/image', '/camera/color/image_raw'),
    ('depth/image', '/camera/depth/image_raw'),
    ('depth/camera_info', '/camera/depth/camera_info'),
    ('camera_pose', '/camera/pose'),
]
PLAYED_TOPICS = [topic for _, topic in BAG_REMAPPINGS] + ['/tf', '/tf_static']


def generate_launch_description():
    """Declare the launch arguments, the bag player, both nodes and RViz."""
    share = get_package_share_directory(PACKAGE)
    play_command = ['ros2', 'bag', 'play', LaunchConfiguration('bag'), '--clock',
                    '--rate', LaunchConfiguration('rate'), '--topics', *PLAYED_TOPICS]
    node_parameters = [LaunchConfiguration('params_file'), {'use_sim_time': True}]
    return LaunchDescription([
        DeclareLaunchArgument('bag', description='Path of the sequence bag (directory).'),
        DeclareLaunchArgument('rate', default_value='1.0',
                              description='Playback speed factor of ros2 bag play.'),
        DeclareLaunchArgument('loop', default_value='false',
                              description='Play the bag in a loop.'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'scannet.yaml'),
                              description='ROS 2 parameter file of both nodes.'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='Start RViz with rviz/onlineanyseg.rviz.'),
        ExecuteProcess(cmd=play_command, output='screen',
                       condition=UnlessCondition(LaunchConfiguration('loop'))),
        ExecuteProcess(cmd=play_command + ['--loop'], output='screen',
                       condition=IfCondition(LaunchConfiguration('loop'))),
        Node(
            package=PACKAGE,
            executable='perception_node',
            name='perception_node',
            output='screen',
            parameters=node_parameters,
            remappings=BAG_REMAPPINGS,
        ),
        Node(
            package=PACKAGE,
            executable='segmentation_node',
            name='segmentation_node',
            output='screen',
            parameters=node_parameters,
        ),
        Node(
            package='rviz2',
            executable='rviz2',
            name='rviz2',
            arguments=['-d', os.path.join(share, 'rviz', 'onlineanyseg.rviz')],
            parameters=[{'use_sim_time': True}],
            condition=IfCondition(LaunchConfiguration('rviz')),
        ),
    ])
