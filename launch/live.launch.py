"""Live mapping from an RGB-D camera: perception node, segmentation node and (optionally) RViz.

Example (RealSense with aligned depth, poses from TF)::

    ros2 launch onlineanyseg_ros live.launch.py device:=cuda rviz:=true

The camera topics are launch arguments; the node parameters come from ``params_file``
(default: the package's ``config/onlineanyseg.yaml``), and ``device`` overrides the torch
device of both nodes.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = 'onlineanyseg_ros'


def generate_launch_description():
    """Declare the launch arguments, both nodes and RViz."""
    share = get_package_share_directory(PACKAGE)
    node_parameters = [
        LaunchConfiguration('params_file'),
        {'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'), value_type=bool),
         'device': ParameterValue(LaunchConfiguration('device'), value_type=str)},
    ]
    log_arguments = ['--log-level', LaunchConfiguration('log_level')]
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of both nodes and their relative topics '
                                          '(RViz shows the root namespace).'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'onlineanyseg.yaml'),
                              description='ROS 2 parameter file of both nodes.'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use /clock (true when replaying a bag).'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='Start RViz with rviz/onlineanyseg.rviz.'),
        DeclareLaunchArgument('device', default_value='cuda',
                              description='Torch device of both nodes (cuda, cuda:1, cpu); '
                                          'overrides the parameter file.'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description='Log level of both nodes (debug, info, warn, ...).'),
        DeclareLaunchArgument('color_topic', default_value='/camera/camera/color/image_raw',
                              description='Colour image (rgb8 or bgr8).'),
        DeclareLaunchArgument('depth_topic',
                              default_value='/camera/camera/aligned_depth_to_color/image_raw',
                              description='Depth image registered to colour (16UC1 mm or '
                                          '32FC1 m).'),
        DeclareLaunchArgument('camera_info_topic',
                              default_value='/camera/camera/aligned_depth_to_color/camera_info',
                              description='CameraInfo of the depth image.'),
        DeclareLaunchArgument('pose_topic', default_value='/camera/pose',
                              description='PoseStamped T_world_camera, used only with the '
                                          'parameter pose_source: topic.'),
        Node(
            package=PACKAGE,
            executable='perception_node',
            name='perception_node',
            namespace=LaunchConfiguration('namespace'),
            output='screen',
            parameters=node_parameters,
            remappings=[
                ('color/image', LaunchConfiguration('color_topic')),
                ('depth/image', LaunchConfiguration('depth_topic')),
                ('depth/camera_info', LaunchConfiguration('camera_info_topic')),
                ('camera_pose', LaunchConfiguration('pose_topic')),
            ],
            ros_arguments=log_arguments,
        ),
        Node(
            package=PACKAGE,
            executable='segmentation_node',
            name='segmentation_node',
            namespace=LaunchConfiguration('namespace'),
            output='screen',
            parameters=node_parameters,
            ros_arguments=log_arguments,
        ),
        Node(
            package='rviz2',
            executable='rviz2',
            name='rviz2',
            arguments=['-d', os.path.join(share, 'rviz', 'onlineanyseg.rviz')],
            parameters=[{'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                                        value_type=bool)}],
            condition=IfCondition(LaunchConfiguration('rviz')),
        ),
    ])
