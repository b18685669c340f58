"""Procedural indoor rooms with exact ground truth, written in the ScanNet export layout.

A room (floor + 4 walls) holds a table with things on it, a chair pushed against the table,
stacked boxes, a cabinet with a lamp and further random objects along the walls. Every
object, wall and the floor is one ground-truth instance with a ScanNet200 class id. A camera
circles the room centre looking inward and slightly down; frames are rendered by analytic
ray casting (``primitives.cast_rays``). World frame: metres, z up, floor at z = 0, room
centred on the origin.
"""

import concurrent.futures
import dataclasses
from dataclasses import dataclass
import os
import time
from typing import List, Optional, Tuple

import numpy as np
import tqdm

from onlineanyseg_ros.core.config import config_to_dict, spec, validate_config
from onlineanyseg_ros.data import io, scannet
from onlineanyseg_ros.data import primitives as prim


@dataclass(frozen=True)
class SyntheticSceneConfig:
    """Parameters of one synthetic room and its camera sequence."""

    num_frames: int = spec(300, 'Frames of the camera sequence.', 1, 100000)
    width: int = spec(640, 'Image width, pixels.', 16, 4096)
    height: int = spec(480, 'Image height, pixels.', 16, 4096)
    focal_px: float = spec(525.0, 'Focal length fx = fy, pixels (Kinect-like).', 10.0, 10000.0)
    rate_hz: float = spec(30.0, 'Frame rate: frame i is stamped i / rate_hz seconds.',
                          0.1, 1000.0)
    seed: int = spec(0, 'Seed of the layout, colours, pose jitter and depth noise.', 0,
                     2 ** 31 - 1)
    num_objects: int = spec(10, 'Objects besides floor and walls (compounds count once).',
                            8, 16)
    room_length_m: float = spec(5.0, 'Room extent along world x, metres.', 4.0, 12.0)
    room_width_m: float = spec(4.0, 'Room extent along world y, metres.', 3.5, 12.0)
    room_height_m: float = spec(2.6, 'Wall height, metres.', 2.0, 5.0)
    depth_noise_std_m: float = spec(0.002, 'Depth noise std at 1 m; it grows with depth '
                                    'squared like a Kinect (0 = clean).', 0.0, 0.1)
    hole_fraction: float = spec(0.0, 'Share of pixels set to invalid depth, in 4x4 pixel '
                                'blocks (0 = none).', 0.0, 0.9)
    pose_jitter_m: float = spec(0.0, 'Std of a per-frame camera position shake, metres; '
                                'the written poses are the shaken ones.', 0.0, 0.2)
    pose_jitter_rad: float = spec(0.0, 'Std of a per-frame camera rotation shake, radians.',
                                  0.0, 0.2)
    trajectory_radius_m: float = spec(1.3, 'Radius of the camera loop around the room '
                                      'centre, metres.', 0.2, 5.0)
    camera_height_m: float = spec(1.4, 'Mean camera height above the floor, metres.',
                                  0.5, 2.4)
    camera_height_swing_m: float = spec(0.2, 'Camera height varies by +/- this along the '
                                        'loop, metres.', 0.0, 1.0)
    look_at_height_m: float = spec(0.6, 'Height of the point the camera looks at, metres.',
                                   0.0, 2.0)
    look_beyond_m: float = spec(0.8, 'The look-at point lies this far beyond the room centre, '
                                'seen from the camera (views across the room), metres.',
                                0.0, 3.0)
    revolutions: float = spec(1.0, 'Loops around the room over the whole sequence.',
                              0.05, 20.0)
    gt_point_spacing_m: float = spec(0.015, 'Spacing of the ground-truth surface samples, '
                                     'metres.', 0.005, 0.1)

    def __post_init__(self) -> None:
        """Check every field's range and that the camera loop stays clear of the walls."""
        validate_config(self)
        half_min = min(self.room_length_m, self.room_width_m) / 2
        if self.trajectory_radius_m > half_min - 0.6:
            raise ValueError('SyntheticSceneConfig.trajectory_radius_m must leave 0.6 m to the '
                             f'nearest wall (<= {half_min - 0.6:.2f} m here)')
        if self.camera_height_m + self.camera_height_swing_m >= self.room_height_m - 0.1:
            raise ValueError('SyntheticSceneConfig.camera_height_m + camera_height_swing_m must '
                             'stay below room_height_m - 0.1')


@dataclass(frozen=True)
class SyntheticInstance:
    """One ground-truth instance: id ``g`` (>= 1), ScanNet200 class id, name and shape kind."""

    instance_id: int
    class_id: int
    name: str
    kind: str


@dataclass(frozen=True)
class SyntheticScene:
    """A room: packed primitives, the instance table (row g-1 = instance g) and extents."""

    primitives: prim.Primitives
    instances: Tuple[SyntheticInstance, ...]
    half_extent_m: Tuple[float, float, float]


@dataclass(frozen=True)
class RenderedFrame:
    """One rendered view.

    Attributes:
        color: uint8 ``(H, W, 3)`` RGB.
        depth: float32 ``(H, W)`` camera z in metres, 0 = no surface or a hole.
        instance: uint16 ``(H, W)`` GT instance id, 0 = none.

    """

    color: np.ndarray
    depth: np.ndarray
    instance: np.ndarray


# ScanNet200 class ids (benchmark VALID_CLASS_IDS_200).
CLASS_IDS = {'wall': 1, 'chair': 2, 'floor': 3, 'table': 4, 'cabinet': 7, 'pillow': 13,
             'box': 26, 'lamp': 28, 'stool': 38, 'plant': 40, 'trash can': 56}
_WALL_THICKNESS_M = 0.1


class _SceneBuilder:
    """Accumulate primitives and instances; every ``add_*`` belongs to the open instance."""

    def __init__(self, rng: np.random.Generator) -> None:
        """Start an empty scene drawing colours from ``rng``."""
        self.rng = rng
        self.rows: List[tuple] = []
        self.instances: List[SyntheticInstance] = []
        self.footprints: List[Tuple[float, float, float]] = []

    def begin(self, name: str, kind: str) -> None:
        """Open a new instance of class ``name``; its colour family is drawn now."""
        self.instances.append(SyntheticInstance(len(self.instances) + 1, CLASS_IDS[name],
                                                name, kind))
        self.albedo = self.rng.uniform(0.15, 0.9, 3)

    def add(self, kind: int, center, half_size, yaw: float = 0.0, texture: int = prim.PLAIN,
            period: float = 0.1, albedo: Optional[np.ndarray] = None) -> None:
        """Add one primitive to the open instance (``center`` = solid centre, world)."""
        colour = self.albedo if albedo is None else albedo
        self.rows.append((kind, center, half_size, yaw, len(self.instances), colour, texture,
                          period))

    def box_on(self, x: float, y: float, z: float, size, yaw: float = 0.0, **style) -> None:
        """Add a box of full ``size`` (x, y, z) standing on height ``z`` at (x, y)."""
        half = np.asarray(size, dtype=np.float64) / 2
        self.add(prim.BOX, (x, y, z + half[2]), half, yaw, **style)

    def cylinder_on(self, x: float, y: float, z: float, radius: float, height: float,
                    **style) -> None:
        """Add a z-aligned cylinder standing on height ``z`` at (x, y)."""
        self.add(prim.CYLINDER, (x, y, z + height / 2), (radius, radius, height / 2), **style)

    def build(self, half_extent) -> SyntheticScene:
        """Pack everything added so far."""
        columns = list(zip(*self.rows))
        packed = prim.Primitives(
            kind=np.array(columns[0], dtype=np.int8),
            center=np.array(columns[1], dtype=np.float64),
            half_size=np.array(columns[2], dtype=np.float64),
            yaw=np.array(columns[3], dtype=np.float64),
            instance=np.array(columns[4], dtype=np.int32),
            albedo=np.array(columns[5], dtype=np.float64),
            texture=np.array(columns[6], dtype=np.int8),
            texture_period_m=np.array(columns[7], dtype=np.float64))
        return SyntheticScene(packed, tuple(self.instances), tuple(half_extent))


def _add_room(builder: _SceneBuilder, hx: float, hy: float, hz: float) -> None:
    """Add the floor and the 4 walls as thin boxes just outside the room volume."""
    t = _WALL_THICKNESS_M
    builder.begin('floor', 'plane')
    builder.add(prim.BOX, (0, 0, -t / 2), (hx + t, hy + t, t / 2), texture=prim.CHECKER,
                period=0.5)
    for axis, sign in ((0, 1), (0, -1), (1, 1), (1, -1)):
        builder.begin('wall', 'plane')
        center = [0.0, 0.0, hz / 2]
        center[axis] = sign * (hx if axis == 0 else hy) + sign * t / 2
        half = [hx + t, hy + t, hz / 2]
        half[axis] = t / 2
        builder.add(prim.BOX, center, half, texture=prim.STRIPES, period=0.3)


def _add_table_group(builder: _SceneBuilder, rng: np.random.Generator) -> None:
    """Add a table near the centre, a box and a cushion on it and a chair pushed under it."""
    cx, cy = rng.uniform(-0.2, 0.2, 2)
    length, depth, top = rng.uniform(1.1, 1.4), rng.uniform(0.7, 0.85), rng.uniform(0.72, 0.78)
    builder.begin('table', 'compound')
    builder.box_on(cx, cy, top - 0.04, (length, depth, 0.04), texture=prim.STRIPES, period=0.05)
    for sx in (-1, 1):
        for sy in (-1, 1):
            builder.box_on(cx + sx * (length / 2 - 0.07), cy + sy * (depth / 2 - 0.07), 0.0,
                           (0.05, 0.05, top - 0.04))
    builder.begin('box', 'box')
    size = (rng.uniform(0.2, 0.35), rng.uniform(0.15, 0.25), rng.uniform(0.1, 0.2))
    builder.box_on(cx - length / 4, cy + rng.uniform(-0.1, 0.1), top, size,
                   yaw=rng.uniform(-0.6, 0.6), texture=prim.CHECKER, period=0.06)
    builder.begin('pillow', 'sphere')
    radius = rng.uniform(0.08, 0.12)
    builder.add(prim.SPHERE, (cx + length / 4, cy + rng.uniform(-0.15, 0.15), top + radius),
                (radius, radius, radius))
    side = rng.choice([-1.0, 1.0])
    seat_x = cx + side * (length / 2 + 0.225 - 0.12)  # seat front slides 12 cm under the top
    builder.begin('chair', 'compound')
    builder.box_on(seat_x, cy, 0.43, (0.45, 0.45, 0.04))
    builder.box_on(seat_x + side * 0.205, cy, 0.47, (0.04, 0.45, 0.45), texture=prim.STRIPES,
                   period=0.08)
    for sx in (-1, 1):
        for sy in (-1, 1):
            builder.box_on(seat_x + sx * 0.2, cy + sy * 0.2, 0.0, (0.04, 0.04, 0.43))
    builder.footprints.append((cx, cy, np.hypot(length / 2, depth / 2)))
    builder.footprints.append((seat_x, cy, 0.33))


def _add_floor_object(builder: _SceneBuilder, rng: np.random.Generator, template: str,
                      x: float, y: float) -> None:
    """Add one free-standing object of ``template`` standing on the floor at (x, y)."""
    if template == 'stack':
        builder.begin('box', 'box')
        low = (rng.uniform(0.4, 0.55), rng.uniform(0.35, 0.45), rng.uniform(0.3, 0.4))
        builder.box_on(x, y, 0.0, low, yaw=rng.uniform(-0.3, 0.3), texture=prim.CHECKER,
                       period=0.1)
        builder.begin('box', 'box')
        builder.box_on(x, y, low[2], (0.3, 0.25, rng.uniform(0.15, 0.25)),
                       yaw=rng.uniform(-0.3, 0.3))
    elif template == 'cabinet':
        builder.begin('cabinet', 'box')
        height = rng.uniform(0.8, 1.0)
        builder.box_on(x, y, 0.0, (0.7, 0.4, height), yaw=np.arctan2(-y, -x),
                       texture=prim.STRIPES, period=0.2)
        builder.begin('lamp', 'compound')
        builder.cylinder_on(x, y, height, 0.08, 0.25)
        builder.add(prim.SPHERE, (x, y, height + 0.25 + 0.12), (0.15, 0.15, 0.15))
    elif template == 'trash can':
        builder.begin('trash can', 'cylinder')
        builder.cylinder_on(x, y, 0.0, rng.uniform(0.12, 0.18), rng.uniform(0.3, 0.45),
                            texture=prim.STRIPES, period=0.05)
    elif template == 'plant':
        builder.begin('plant', 'compound')
        builder.cylinder_on(x, y, 0.0, 0.13, 0.28, albedo=np.array([0.6, 0.35, 0.2]))
        builder.add(prim.SPHERE, (x, y, 0.28 + 0.15), (0.22, 0.22, 0.22),
                    albedo=rng.uniform([0.1, 0.4, 0.1], [0.3, 0.7, 0.3]), texture=prim.CHECKER,
                    period=0.05)
    elif template == 'stool':
        builder.begin('stool', 'compound')
        builder.cylinder_on(x, y, 0.0, 0.16, 0.03)
        builder.cylinder_on(x, y, 0.03, 0.035, 0.4)
        builder.cylinder_on(x, y, 0.43, 0.18, 0.05, texture=prim.CHECKER, period=0.05)
    else:
        builder.begin('box', 'box')
        builder.box_on(x, y, 0.0, rng.uniform([0.25, 0.25, 0.2], [0.5, 0.45, 0.5]),
                       yaw=rng.uniform(-np.pi, np.pi), texture=prim.CHECKER, period=0.08)


_FOOTPRINT_M = {'stack': 0.36, 'cabinet': 0.41, 'trash can': 0.2, 'plant': 0.24,
                'stool': 0.2, 'box': 0.35}
_TEMPLATES = ('stack', 'cabinet', 'trash can', 'plant', 'stool', 'box')


def _place(builder: _SceneBuilder, rng: np.random.Generator, radius: float,
           config: SyntheticSceneConfig) -> Tuple[float, float]:
    """Draw a free floor spot outside the camera loop for a footprint of ``radius``."""
    hx, hy = config.room_length_m / 2, config.room_width_m / 2
    clearance = config.trajectory_radius_m + 0.3 + radius
    for _ in range(500):
        x = rng.uniform(-hx + radius + 0.02, hx - radius - 0.02)
        y = rng.uniform(-hy + radius + 0.02, hy - radius - 0.02)
        if np.hypot(x, y) < clearance:
            continue
        if all(np.hypot(x - fx, y - fy) > radius + fr + 0.05 for fx, fy, fr in
               builder.footprints):
            builder.footprints.append((x, y, radius))
            return x, y
    raise ValueError(f'no free floor spot left for {config.num_objects} objects: lower '
                     'num_objects or enlarge the room')


def build_scene(config: SyntheticSceneConfig) -> SyntheticScene:
    """Lay out the room of ``config`` (deterministic per ``config.seed``)."""
    rng = np.random.default_rng([config.seed, 0])
    hx, hy, hz = config.room_length_m / 2, config.room_width_m / 2, config.room_height_m
    builder = _SceneBuilder(rng)
    _add_room(builder, hx, hy, hz)
    _add_table_group(builder, rng)
    # The table group holds 4 objects (table, box, pillow, chair); a stack holds 2 and a
    # cabinet with its lamp 2. Every template once, then single objects, so the count
    # always lands exactly on num_objects.
    count = 4
    singles = [name for name in _TEMPLATES if name not in ('stack', 'cabinet')]
    templates = list(_TEMPLATES) + list(rng.choice(singles, size=16))
    for template in templates:
        size = 2 if template in ('stack', 'cabinet') else 1
        if count + size > config.num_objects:
            if count == config.num_objects:
                break
            continue
        x, y = _place(builder, rng, _FOOTPRINT_M[template], config)
        _add_floor_object(builder, rng, template, x, y)
        count += size
    return builder.build((hx, hy, hz))


def intrinsics(config: SyntheticSceneConfig) -> np.ndarray:
    """Return the float64 ``(3, 3)`` pinhole K, principal point at the image centre."""
    return np.array([[config.focal_px, 0.0, (config.width - 1) / 2],
                     [0.0, config.focal_px, (config.height - 1) / 2],
                     [0.0, 0.0, 1.0]])


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Return the ``(4, 4)`` camera (OpenCV optical) to world pose looking at ``target``."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = eye
    return pose


def _small_rotation(rotation_vector: np.ndarray) -> np.ndarray:
    """Return the ``(3, 3)`` rotation of an axis-angle vector (Rodrigues)."""
    angle = np.linalg.norm(rotation_vector)
    if angle < 1e-12:
        return np.eye(3)
    k = rotation_vector / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def camera_trajectory(config: SyntheticSceneConfig) -> np.ndarray:
    """Return float64 ``(F, 4, 4)`` camera-to-world poses of the loop (plus optional shake)."""
    rng = np.random.default_rng([config.seed, 1])
    phase = 2 * np.pi * config.revolutions * np.arange(config.num_frames) / config.num_frames
    poses = np.empty((config.num_frames, 4, 4))
    for i, angle in enumerate(phase):
        heading = np.array([np.cos(angle), np.sin(angle), 0.0])
        eye = config.trajectory_radius_m * heading
        eye[2] = config.camera_height_m + config.camera_height_swing_m * np.sin(2 * angle)
        target = -config.look_beyond_m * heading
        target[2] = config.look_at_height_m
        poses[i] = _look_at(eye, target)
        if config.pose_jitter_m > 0 or config.pose_jitter_rad > 0:
            poses[i, :3, 3] += rng.normal(0.0, config.pose_jitter_m, 3)
            shake = _small_rotation(rng.normal(0.0, config.pose_jitter_rad, 3))
            poses[i, :3, :3] = poses[i, :3, :3] @ shake
    return poses


def render_frame(scene: SyntheticScene, config: SyntheticSceneConfig,
                 T_world_camera: np.ndarray, frame_index: int = 0) -> RenderedFrame:
    """Render colour, depth and instance ids at a camera pose (noise seeded per frame)."""
    K = intrinsics(config)
    depth, index = prim.cast_rays(scene.primitives, K, T_world_camera, config.width,
                                  config.height)
    hit = index >= 0
    rays = prim.pixel_rays(K, config.width, config.height).astype(np.float32)
    pose = T_world_camera.astype(np.float32)
    points = prim.rotate(rays[hit] * depth[hit][:, None], pose[:3, :3]) + pose[:3, 3]
    color = np.zeros((config.height, config.width, 3), dtype=np.uint8)
    color[hit] = prim.shade(scene.primitives, index[hit], points)
    instance = np.zeros((config.height, config.width), dtype=np.uint16)
    instance[hit] = scene.primitives.instance[index[hit]]
    depth = np.where(hit, depth, np.float32(0.0))
    if config.depth_noise_std_m > 0 or config.hole_fraction > 0:
        depth = _corrupt_depth(depth, config, frame_index)
    return RenderedFrame(color=color, depth=depth, instance=instance)


def _corrupt_depth(depth: np.ndarray, config: SyntheticSceneConfig,
                   frame_index: int) -> np.ndarray:
    """Add depth-squared Gaussian noise and 4x4-pixel holes (deterministic per frame)."""
    rng = np.random.default_rng([config.seed, 2, frame_index])
    noisy = depth + rng.standard_normal(depth.shape).astype(np.float32) * (
        np.float32(config.depth_noise_std_m) * depth * depth)
    noisy = np.where(depth > 0, np.maximum(noisy, 0.0), 0.0).astype(np.float32)
    if config.hole_fraction > 0:
        blocks = rng.random(((depth.shape[0] + 3) // 4, (depth.shape[1] + 3) // 4))
        holes = np.kron(blocks < config.hole_fraction, np.ones((4, 4), dtype=bool))
        noisy[holes[:depth.shape[0], :depth.shape[1]]] = 0.0
    return noisy


def sample_ground_truth(scene: SyntheticScene, spacing_m: float
                        ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample the visible surface of every instance at about ``spacing_m``.

    Returns float32 ``(N, 3)`` world points (metres), uint8 ``(N, 3)`` unshaded textured
    colours and int32 ``(N,)`` GT instance ids g >= 1 (see ``visible_surface_samples``).
    """
    hx, hy, hz = scene.half_extent_m
    points, index = prim.visible_surface_samples(scene.primitives, spacing_m,
                                                 np.array([[-hx, -hy, 0.0], [hx, hy, hz]]))
    colors = np.clip(np.rint(prim.surface_albedo(scene.primitives, index, points) * 255), 0, 255)
    return (points.astype(np.float32), colors.astype(np.uint8),
            scene.primitives.instance[index].astype(np.int32))


def ground_truth_labels(scene: SyntheticScene, instance_ids: np.ndarray) -> np.ndarray:
    """Return int64 ScanNet-style GT label values ``class_id * 1000 + g`` for ids g >= 1."""
    class_ids = np.array([instance.class_id for instance in scene.instances], dtype=np.int64)
    return class_ids[np.asarray(instance_ids) - 1] * 1000 + instance_ids


@dataclass(frozen=True)
class SyntheticSummary:
    """What ``write_synthetic_sequence`` wrote and how fast."""

    out_dir: str
    scene_name: str
    num_frames: int
    num_instances: int
    num_gt_points: int
    seconds: float

    @property
    def frames_per_second(self) -> float:
        """Rendered and written frames per wall-clock second."""
        return self.num_frames / max(self.seconds, 1e-9)


def write_synthetic_sequence(out_dir, config: SyntheticSceneConfig,
                             progress: bool = True) -> SyntheticSummary:
    """Render ``config`` into ``out_dir`` in the ScanNet export layout, with ground truth.

    Writes ``color/<i>.jpg``, ``depth/<i>.png`` (uint16 mm), ``pose/<i>.txt``,
    ``instance/<i>.png`` (uint16 GT ids), ``intrinsic/intrinsic_{depth,color}.txt``,
    ``<scene>_vh_clean_2.ply`` (GT surface samples), ``<scene>.txt`` (one
    ``class_id * 1000 + g`` per vertex) and ``meta.json``; scene = basename of ``out_dir``.
    Frames are rendered by a small thread pool (numpy and the image encoders release the
    GIL); every file depends only on the config, so the same seed gives identical bytes.
    """
    started = time.perf_counter()
    root = scannet.prepare_scannet_dirs(out_dir, instance=True)
    scene_name = root.resolve().name
    scene = build_scene(config)
    poses = camera_trajectory(config)
    scannet.write_intrinsics(root, intrinsics(config))

    def render_and_write(i: int) -> None:
        frame = render_frame(scene, config, poses[i], i)
        scannet.write_frame(root, str(i), frame.color, frame.depth, poses[i], frame.instance)

    workers = max(1, min(4, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        done = pool.map(render_and_write, range(config.num_frames))
        for _ in tqdm.tqdm(done, total=config.num_frames, desc=f'rendering {scene_name}',
                           unit='frame', disable=not progress):
            pass
    points, colors, instance_ids = sample_ground_truth(scene, config.gt_point_spacing_m)
    io.write_ply(root / f'{scene_name}_vh_clean_2.ply', points, colors)
    io.write_label_file(root / f'{scene_name}.txt', ground_truth_labels(scene, instance_ids))
    io.write_json(root / 'meta.json', {
        'scene': scene_name,
        'generator': 'onlineanyseg_ros.data.synthetic',
        'config': config_to_dict(config),
        'K': intrinsics(config).tolist(),
        'instances': [dataclasses.asdict(instance) for instance in scene.instances],
    })
    return SyntheticSummary(out_dir=str(root), scene_name=scene_name,
                            num_frames=config.num_frames, num_instances=len(scene.instances),
                            num_gt_points=len(points), seconds=time.perf_counter() - started)
