"""Keyframe selection and the camera pose history it is fed from (ROS-free).

``KeyframeSelector`` decides which valid frames get masks and CLIP features: the first frame,
then every ``every_n_frames``-th frame, or a frame that moved or turned far enough from the
last keyframe. ``PoseHistory`` holds ``T_world_camera`` samples of a pose stream (e.g. a
PoseStamped topic) and answers lookups at frame stamps.

Poses are float64 ``(4, 4)`` ``T_world_camera`` (camera optical frame to world, metres);
stamps are integer nanoseconds.
"""

import bisect
from dataclasses import dataclass
import math
from typing import List, Optional, Tuple

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from onlineanyseg_ros.core.config import spec, validate_config
from onlineanyseg_ros.core.types import is_rigid_transform

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class KeyframePolicyConfig:
    """When a frame becomes a keyframe (any active rule suffices)."""

    every_n_frames: int = spec(10, 'A frame becomes a keyframe after this many frames since '
                               'the last keyframe (0 = only motion decides).', 0, 100000)
    min_translation_m: float = spec(0.0, 'A frame that moved at least this far from the last '
                                    'keyframe is a keyframe (0 = off).', 0.0, 100.0)
    min_rotation_deg: float = spec(0.0, 'A frame that turned at least this much from the '
                                   'last keyframe is a keyframe (0 = off).', 0.0, 180.0)

    def __post_init__(self) -> None:
        """Check every field and that at least one rule is active."""
        validate_config(self)
        if (self.every_n_frames == 0 and self.min_translation_m == 0.0
                and self.min_rotation_deg == 0.0):
            raise ValueError('KeyframePolicyConfig.every_n_frames: no keyframe rule is active '
                             '(every_n_frames, min_translation_m and min_rotation_deg are 0)')


def relative_motion(T_world_a: np.ndarray, T_world_b: np.ndarray) -> Tuple[float, float]:
    """Return ``(translation_m, rotation_deg)`` between two camera poses (float64 4x4).

    The translation is the distance between the camera centres; the rotation is the angle
    of ``R_a^T R_b`` in [0, 180] degrees (atan2 form, accurate near 0 and 180).
    """
    T_a = np.asarray(T_world_a, dtype=np.float64)
    T_b = np.asarray(T_world_b, dtype=np.float64)
    translation_m = float(np.linalg.norm(T_b[:3, 3] - T_a[:3, 3]))
    R = T_a[:3, :3].T @ T_b[:3, :3]
    sin_angle = 0.5 * math.hypot(R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1])
    cos_angle = 0.5 * (np.trace(R) - 1.0)
    return translation_m, math.degrees(math.atan2(sin_angle, cos_angle))


class KeyframeSelector:
    """Pick keyframes from a stream of valid frames, one ``add_frame`` call per frame.

    The first frame (after construction or ``reset``) is a keyframe. Later frames are when
    ``every_n_frames`` (> 0) frames have passed since the last keyframe, or when the camera
    moved at least ``min_translation_m`` (> 0) or turned at least ``min_rotation_deg`` (> 0)
    since the last keyframe.
    """

    def __init__(self, config: KeyframePolicyConfig = KeyframePolicyConfig()) -> None:
        """Create a selector whose next frame is a keyframe."""
        self.config = config
        self._last_keyframe_pose: Optional[np.ndarray] = None
        self._frames_since_keyframe = 0
        self.frames = 0
        self.keyframes = 0

    def reset(self) -> None:
        """Forget the last keyframe (e.g. after time jumped back); totals are kept."""
        self._last_keyframe_pose = None
        self._frames_since_keyframe = 0

    def is_due(self, T_world_camera: np.ndarray) -> bool:
        """Return whether a frame at ``T_world_camera`` would be a keyframe (no state change)."""
        if self._last_keyframe_pose is None:
            return True
        every_n = self.config.every_n_frames
        if every_n > 0 and self._frames_since_keyframe + 1 >= every_n:
            return True
        translation_m, rotation_deg = relative_motion(self._last_keyframe_pose, T_world_camera)
        min_translation_m = self.config.min_translation_m
        min_rotation_deg = self.config.min_rotation_deg
        return ((min_translation_m > 0.0 and translation_m >= min_translation_m)
                or (min_rotation_deg > 0.0 and rotation_deg >= min_rotation_deg))

    def add_frame(self, T_world_camera: np.ndarray) -> bool:
        """Record one valid frame (rigid float64 4x4 pose); return True when it is a keyframe.

        Raises ValueError when the pose is not a finite rigid transform.
        """
        if not is_rigid_transform(T_world_camera):
            raise ValueError('keyframe selection needs a finite rigid 4x4 T_world_camera')
        self.frames += 1
        if not self.is_due(T_world_camera):
            self._frames_since_keyframe += 1
            return False
        self._last_keyframe_pose = np.array(T_world_camera, dtype=np.float64)
        self._frames_since_keyframe = 0
        self.keyframes += 1
        return True


def invalid_pose() -> np.ndarray:
    """Return the float64 (4, 4) all-NaN matrix that marks a pose known to be invalid."""
    return np.full((4, 4), np.nan)


class PoseHistory:
    """Recent ``T_world_camera`` samples of a pose stream, looked up at frame stamps.

    A lookup within ``tolerance_ns`` of a sample returns that sample; between two samples it
    interpolates (lerp of the translation, slerp of the rotation). An invalid sample
    (non-finite or non-rigid) is kept as known-bad: a lookup that would use it returns the
    all-NaN ``invalid_pose()``, so the caller drops the frame rather than repairing its
    pose from the neighbours. None means unknown: not received yet, or older than the
    history. Samples older than ``window_ns`` before the newest are forgotten; a sample that
    old arriving means time went backwards, and the history restarts from it.
    """

    def __init__(self, tolerance_ns: int = 5_000_000, window_ns: int = 10 * NS_PER_S) -> None:
        """Create an empty history."""
        if tolerance_ns < 0 or window_ns <= 0:
            raise ValueError(f'tolerance_ns must be >= 0 and window_ns > 0, got {tolerance_ns} '
                             f'and {window_ns}')
        self.tolerance_ns = int(tolerance_ns)
        self.window_ns = int(window_ns)
        self._stamps_ns: List[int] = []
        self._poses: List[np.ndarray] = []
        self.restarts = 0

    def __len__(self) -> int:
        """Return the number of samples held (valid and invalid)."""
        return len(self._stamps_ns)

    def clear(self) -> None:
        """Forget every sample."""
        self._stamps_ns.clear()
        self._poses.clear()

    def add(self, stamp_ns: int, T_world_camera: np.ndarray) -> bool:
        """Store one sample (any order; an equal stamp replaces); return whether it is valid."""
        T = np.asarray(T_world_camera, dtype=np.float64)
        valid = T.shape == (4, 4) and is_rigid_transform(T)
        stamp_ns = int(stamp_ns)
        if self._stamps_ns and stamp_ns < self._stamps_ns[-1] - self.window_ns:
            self.clear()
            self.restarts += 1
        sample = T.copy() if valid else invalid_pose()
        index = bisect.bisect_left(self._stamps_ns, stamp_ns)
        if index < len(self._stamps_ns) and self._stamps_ns[index] == stamp_ns:
            self._poses[index] = sample
        else:
            self._stamps_ns.insert(index, stamp_ns)
            self._poses.insert(index, sample)
        first_kept = bisect.bisect_left(self._stamps_ns, self._stamps_ns[-1] - self.window_ns)
        del self._stamps_ns[:first_kept], self._poses[:first_kept]
        return valid

    def lookup(self, stamp_ns: int) -> Optional[np.ndarray]:
        """Return float64 ``(4, 4)`` ``T_world_camera`` at ``stamp_ns``, all-NaN, or None.

        All-NaN: the sample that decides this stamp is invalid. None: no sample covers it.
        """
        stamps = self._stamps_ns
        if not stamps:
            return None
        after = bisect.bisect_left(stamps, stamp_ns)
        nearest = min((i for i in (after - 1, after) if 0 <= i < len(stamps)),
                      key=lambda i: abs(stamps[i] - stamp_ns))
        if abs(stamps[nearest] - stamp_ns) <= self.tolerance_ns:
            return self._poses[nearest].copy()
        if not 0 < after < len(stamps):
            return None
        before_pose, after_pose = self._poses[after - 1], self._poses[after]
        if np.isnan(before_pose).any() or np.isnan(after_pose).any():
            return invalid_pose()
        fraction = (stamp_ns - stamps[after - 1]) / (stamps[after] - stamps[after - 1])
        rotations = Rotation.from_matrix(np.stack([before_pose[:3, :3], after_pose[:3, :3]]))
        T = np.eye(4)
        T[:3, :3] = Slerp([0.0, 1.0], rotations)([fraction]).as_matrix()[0]
        T[:3, 3] = (1.0 - fraction) * before_pose[:3, 3] + fraction * after_pose[:3, 3]
        return T
