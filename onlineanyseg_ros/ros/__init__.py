"""rclpy side: nodes, message conversions, parameters, QoS and the frame queue."""
