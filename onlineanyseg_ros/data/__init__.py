"""ROS-free datasets: ScanNet-format sequences, synthetic scenes, rosbag2 files."""
