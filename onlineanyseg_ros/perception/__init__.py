"""ROS-free 2D side: mask generators and the CLIP embedder."""
