"""onlineanyseg_ros: live open-vocabulary 3D instance mapping (OnlineAnySeg) for ROS 2."""

__version__ = '0.1.0'
