"""ROS-free core of the method: types, config, voxel hash, lifting, mask graph, segmenter."""
