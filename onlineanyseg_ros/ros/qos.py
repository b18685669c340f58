"""QoS profiles per topic role.

- sensor inputs (colour, depth, camera_info, camera_pose): reliable keep-last by default,
  because large images over best-effort are mostly lost between processes with the default
  transports; ``sensor_data`` (best effort) for drivers that only publish best-effort
  (a reliable subscriber receives nothing from a best-effort publisher);
- keyframe topics: reliable keep-last, every bundle part must arrive;
- map outputs (instance cloud, markers): reliable + transient-local depth 1, so a viewer
  started later gets the current map;
- /tf volatile and /tf_static transient-local, both reliable, as tf2_ros uses them.
"""

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, qos_profile_sensor_data, QoSProfile,
                       ReliabilityPolicy)

SENSOR_QOS_CHOICES = ('reliable', 'sensor_data')


def sensor_input_qos(profile: str = 'reliable', depth: int = 5) -> QoSProfile:
    """Return the QoS of a sensor input: ``reliable`` keep-last or ``sensor_data`` best effort.

    ``depth`` is the keep-last history of either profile.
    """
    if profile not in SENSOR_QOS_CHOICES:
        raise ValueError(f'sensor QoS profile must be one of {list(SENSOR_QOS_CHOICES)}, got '
                         f'{profile!r}')
    if depth < 1:
        raise ValueError(f'sensor QoS depth must be >= 1, got {depth}')
    if profile == 'sensor_data':
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                          reliability=qos_profile_sensor_data.reliability,
                          durability=qos_profile_sensor_data.durability)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def keyframe_qos(depth: int = 10) -> QoSProfile:
    """Return the QoS of the keyframe bundle topics: reliable, volatile, keep-last ``depth``."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def map_output_qos() -> QoSProfile:
    """Return the QoS of map outputs: reliable, transient-local (latched), depth 1."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def tf_qos(depth: int = 100) -> QoSProfile:
    """Return the QoS of /tf: reliable, volatile, keep-last ``depth`` (as tf2_ros)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def tf_static_qos(depth: int = 100) -> QoSProfile:
    """Return the QoS of /tf_static: reliable, transient-local, keep-last ``depth``."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def diagnostics_qos() -> QoSProfile:
    """Return the QoS of diagnostics: reliable, volatile, keep-last 10."""
    return keyframe_qos(depth=10)
