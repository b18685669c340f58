"""Pure, vectorized conversions between ROS messages and numpy arrays.

One module per message family: ``header`` (Time, Header), ``image`` (Image, label and feature
images), ``camera_info`` (CameraInfo <-> K), ``pose`` (Pose, PoseStamped, TransformStamped
<-> 4x4), ``pointcloud`` (PointCloud2 <-> structured array), ``markers`` (instances ->
MarkerArray). ``quaternion`` holds the ROS-free rotation math they share with the TF buffer.
"""
