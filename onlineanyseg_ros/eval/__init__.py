"""ROS-free evaluation: class-agnostic AP/AP50/AP25 the ScanNet way."""
