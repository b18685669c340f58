"""ament_python package definition of onlineanyseg_ros."""

from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'onlineanyseg_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'benchmarks', 'tools']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml', 'README.md']),
        (os.path.join('share', package_name, 'launch'), glob('launch/*.launch.py')),
        (os.path.join('share', package_name, 'config'), glob('config/*.yaml')),
        (os.path.join('share', package_name, 'rviz'), glob('rviz/*.rviz')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='onlineanyseg_ros maintainers',
    maintainer_email='maintainers@onlineanyseg-ros.dev',
    description='Live open-vocabulary 3D instance mapping (OnlineAnySeg) for ROS 2.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'onlineanyseg = onlineanyseg_ros.cli:main',
            'perception_node = onlineanyseg_ros.ros.perception_node:main',
            'segmentation_node = onlineanyseg_ros.ros.segmentation_node:main',
            'pipeline = onlineanyseg_ros.ros.pipeline:main',
        ],
    },
)
