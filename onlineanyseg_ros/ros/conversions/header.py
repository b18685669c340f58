"""builtin_interfaces/Time and std_msgs/Header <-> integer nanoseconds."""

from builtin_interfaces.msg import Time
from std_msgs.msg import Header

NS_PER_S = 1_000_000_000
_INT32_MIN = -(2 ** 31)
_INT32_MAX = 2 ** 31 - 1


def time_to_ns(stamp: Time) -> int:
    """Return a ``builtin_interfaces/Time`` as integer nanoseconds since the epoch."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_time(stamp_ns: int) -> Time:
    """Return ``builtin_interfaces/Time`` for integer nanoseconds (``nanosec`` in [0, 1e9))."""
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    if not _INT32_MIN <= sec <= _INT32_MAX:
        raise ValueError(f'stamp {stamp_ns} ns does not fit builtin_interfaces/Time (int32 sec)')
    return Time(sec=sec, nanosec=nanosec)


def make_header(stamp_ns: int, frame_id: str) -> Header:
    """Return a ``std_msgs/Header`` with the stamp in nanoseconds and the frame id."""
    return Header(stamp=ns_to_time(stamp_ns), frame_id=frame_id)
