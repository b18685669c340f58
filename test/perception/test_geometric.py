"""Weight-free geometric mask generator: quality on rendered rooms, contract, CLI."""

import argparse

import numpy as np
import pytest

from onlineanyseg_ros.commands import masks as masks_command
from onlineanyseg_ros.core.types import RgbdFrame
from onlineanyseg_ros.data import synthetic
from onlineanyseg_ros.perception.factory import make_mask_generator
from onlineanyseg_ros.perception.geometric import GeometricMaskConfig, GeometricMaskGenerator
from onlineanyseg_ros.perception.precomputed import read_mask_observation

# A small ray-cast room (floor, three walls, boxes, a sphere) with known instances.
HEIGHT, WIDTH = 480, 640
K = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])
LIGHT = np.array([0.3, -1.0, -0.5]) / np.linalg.norm([0.3, -1.0, -0.5])


def _rotation_y(angle_rad):
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rotation_x(angle_rad):
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _hit_plane(origin, dirs, normal, offset):
    """Distance along ``dirs`` (P, 3) to the plane n.x = offset, inf when missed or behind."""
    denom = dirs @ normal
    with np.errstate(divide='ignore', invalid='ignore'):
        t = (offset - origin @ normal) / denom
    t[~np.isfinite(t) | (t <= 0)] = np.inf
    return t, np.broadcast_to(-np.sign(denom)[:, None] * normal, dirs.shape)


def _hit_box(origin, dirs, center, half_size, yaw_rad):
    """Slab test against an oriented box (yaw about world y); returns distance and normal."""
    R = _rotation_y(yaw_rad)
    o = (origin - center) @ R
    d = dirs @ R
    with np.errstate(divide='ignore', invalid='ignore'):
        t1 = (-half_size - o) / d
        t2 = (half_size - o) / d
    t_near = np.minimum(t1, t2)
    t_far = np.maximum(t1, t2)
    t_enter = np.nanmax(t_near, axis=1)
    t_exit = np.nanmin(t_far, axis=1)
    hit = (t_enter <= t_exit) & (t_enter > 0)
    t = np.where(hit, t_enter, np.inf)
    axis = np.nanargmax(t_near, axis=1)
    local_normal = np.zeros_like(d)
    rows = np.arange(d.shape[0])
    local_normal[rows, axis] = -np.sign(d[rows, axis])
    return t, local_normal @ R.T


def _hit_sphere(origin, dirs, center, radius):
    oc = origin - center
    b = dirs @ oc
    disc = b * b - (oc @ oc - radius * radius)
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    t = np.where((disc > 0) & (t > 0), t, np.inf)
    normal = origin + t[:, None] * dirs - center
    with np.errstate(invalid='ignore'):
        normal /= radius
    return t, normal


def render_room(seed=0, noise=True, yaw_deg=0.0):
    """Return ``(RgbdFrame, instance image int32 (H, W))`` of the test room.

    World frame: y down (floor at y = 1.2 m), camera at the origin pitched down 20 degrees
    and turned by ``yaw_deg``. Depth noise is Kinect-like (sigma 1.5 mm * z^2, mm-quantized).
    """
    rng = np.random.default_rng(seed)
    R_wc = _rotation_y(np.deg2rad(yaw_deg)) @ _rotation_x(np.deg2rad(-20.0))
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1],
                         np.ones_like(u)], axis=-1).reshape(-1, 3)
    dirs = rays_cam @ R_wc.T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origin = np.zeros(3)
    objects = [
        ('plane', (np.array([0.0, 1.0, 0.0]), 1.2), (150, 140, 120)),     # floor
        ('plane', (np.array([0.0, 0.0, 1.0]), 4.5), (200, 200, 190)),     # back wall
        ('plane', (np.array([1.0, 0.0, 0.0]), -2.2), (180, 190, 210)),    # left wall
        ('plane', (np.array([1.0, 0.0, 0.0]), 2.2), (210, 180, 170)),     # right wall
        ('box', (np.array([-0.8, 0.9, 2.6]), np.array([0.3, 0.3, 0.3]), 0.5), (200, 40, 40)),
        ('box', (np.array([0.6, 0.95, 2.2]), np.array([0.35, 0.25, 0.2]), -0.3), (40, 60, 200)),
        ('box', (np.array([0.1, 0.6, 3.6]), np.array([0.5, 0.6, 0.3]), 0.0), (60, 160, 60)),
        ('sphere', (np.array([-0.1, 0.95, 2.0]), 0.25), (220, 200, 40)),
        ('box', (np.array([0.6, 0.65, 2.2]), np.array([0.15, 0.05, 0.1]), 0.2), (120, 40, 120)),
    ]
    best_t = np.full(dirs.shape[0], np.inf)
    ids = np.zeros(dirs.shape[0], dtype=np.int32)
    normals = np.zeros_like(dirs)
    colors = np.zeros_like(dirs)
    for index, (kind, params, color) in enumerate(objects, start=1):
        if kind == 'plane':
            t, n = _hit_plane(origin, dirs, *params)
        elif kind == 'box':
            t, n = _hit_box(origin, dirs, *params)
        else:
            t, n = _hit_sphere(origin, dirs, *params)
        closer = t < best_t
        best_t[closer] = t[closer]
        ids[closer] = index
        normals[closer] = n[closer]
        colors[closer] = color
    shade = 0.45 + 0.55 * np.clip(-(normals @ LIGHT), 0.0, 1.0)
    rgb = colors * shade[:, None]
    depth = (best_t * (dirs @ R_wc[:, 2])).reshape(HEIGHT, WIDTH)
    if noise:
        rgb += rng.normal(0.0, 3.0, rgb.shape)
        depth = depth + rng.normal(0.0, 1.5e-3, depth.shape) * depth ** 2
        depth = np.round(depth * 1000.0) / 1000.0
    depth[~np.isfinite(depth) | (depth > 8.0)] = 0.0
    T_world_camera = np.eye(4)
    T_world_camera[:3, :3] = R_wc
    frame = RgbdFrame(color=np.clip(rgb, 0, 255).astype(np.uint8).reshape(HEIGHT, WIDTH, 3),
                      depth=depth.astype(np.float32), K=K.copy(),
                      T_world_camera=T_world_camera)
    instances = ids.reshape(HEIGHT, WIDTH)
    instances[depth == 0] = 0
    return frame, instances


def mean_best_iou(labels, instances, min_pixels=1000):
    """Mean over GT instances (>= ``min_pixels``) of the best IoU with any predicted mask."""
    gt_ids, gt_areas = np.unique(instances[instances > 0], return_counts=True)
    gt_ids = gt_ids[gt_areas >= min_pixels]
    num_pred = int(labels.max())
    pair = instances.astype(np.int64) * (num_pred + 1) + labels
    joint = np.bincount(pair.ravel(), minlength=(int(instances.max()) + 1) * (num_pred + 1))
    joint = joint.reshape(int(instances.max()) + 1, num_pred + 1)
    gt_area = joint.sum(axis=1)
    pred_area = joint.sum(axis=0)
    ious = []
    for gt in gt_ids:
        inter = joint[gt, 1:]
        union = gt_area[gt] + pred_area[1:] - inter
        ious.append(float((inter / np.maximum(union, 1)).max()) if num_pred else 0.0)
    return float(np.mean(ious)), ious


BOX_ON_FLOOR_ID = 5  # the red box, turned so that two side faces and its top are visible


@pytest.fixture(scope='module')
def generator():
    return GeometricMaskGenerator()


@pytest.mark.parametrize('seed, yaw_deg', [(0, 0.0), (1, 15.0)])
def test_quality_on_ray_cast_room(generator, seed, yaw_deg):
    frame, instances = render_room(seed, yaw_deg=yaw_deg)
    obs = generator.generate(frame)
    mean_iou, ious = mean_best_iou(obs.labels, instances)
    assert mean_iou >= 0.8, ious
    # Convex box edges are kept: the box's faces and top form one mask.
    box_index = sorted(np.unique(instances[instances > 0])).index(BOX_ON_FLOOR_ID)
    assert ious[box_index] >= 0.85, ious


def test_quality_on_synthetic_scene(generator):
    config = synthetic.SyntheticSceneConfig(num_frames=40, seed=0)
    scene = synthetic.build_scene(config)
    poses = synthetic.camera_trajectory(config)
    K = synthetic.intrinsics(config)
    scores = []
    for index in (0, 16):
        rendered = synthetic.render_frame(scene, config, poses[index], index)
        frame = RgbdFrame(color=rendered.color, depth=rendered.depth, K=K,
                          T_world_camera=poses[index], frame_index=index)
        obs = generator.generate(frame)
        scores.append(mean_best_iou(obs.labels, rendered.instance.astype(np.int64))[0])
    assert np.mean(scores) >= 0.7, scores


def test_output_contract(generator):
    frame, _ = render_room(2, yaw_deg=-20.0)
    depth = frame.depth.copy()
    depth[100:160, 200:300] = 0.0  # a hole: no mask may cover invalid depth
    frame = RgbdFrame(color=frame.color, depth=depth, K=frame.K,
                      T_world_camera=frame.T_world_camera)
    obs = generator.generate(frame)
    assert obs.labels.dtype == np.int32 and obs.labels.shape == depth.shape
    assert obs.features is None
    assert np.all(obs.labels[depth == 0] == 0)
    areas = np.bincount(obs.labels.ravel())[1:]
    assert obs.num_masks >= 5 and areas.size == obs.num_masks
    assert np.all(areas >= generator.config.min_mask_pixels)
    assert np.all(np.diff(areas) <= 0), 'ids must follow decreasing area'
    assert obs.scores.dtype == np.float32 and obs.scores.shape == (obs.num_masks,)
    assert np.all((obs.scores > 0) & (obs.scores <= 1))


def _textured_wall():
    """Return a fronto-parallel plane 2 m away with a bold checkerboard texture."""
    height, width = 240, 320
    K = np.array([[300.0, 0.0, 159.5], [0.0, 300.0, 119.5], [0.0, 0.0, 1.0]])
    v, u = np.mgrid[0:height, 0:width]
    checker = ((u // 40 + v // 40) % 2).astype(bool)
    color = np.where(checker[..., None], [230, 230, 230], [30, 30, 120]).astype(np.uint8)
    depth = np.full((height, width), 2.0, dtype=np.float32)
    return RgbdFrame(color=color, depth=depth, K=K, T_world_camera=np.eye(4))


def test_texture_on_a_smooth_surface_does_not_cut():
    frame = _textured_wall()
    assert GeometricMaskGenerator().generate(frame).num_masks == 1
    colour_alone = GeometricMaskGenerator(GeometricMaskConfig(color_support_ratio=0.0))
    assert colour_alone.generate(frame).num_masks > 10


@pytest.mark.parametrize('field, value', [('normal_window_px', 0), ('min_mask_pixels', 0),
                                          ('max_concave_angle_deg', 200.0),
                                          ('color_support_ratio', 1.5)])
def test_config_rejects_out_of_range_values(field, value):
    with pytest.raises(ValueError, match=field):
        GeometricMaskConfig(**{field: value})


def test_factory_builds_geometric_and_rejects_unknown():
    generator = make_mask_generator('geometric', min_mask_pixels=800)
    assert generator.name == 'geometric' and generator.config.min_mask_pixels == 800
    with pytest.raises(ValueError, match='unknown GeometricMaskConfig'):
        make_mask_generator('geometric', no_such_field=1)
    with pytest.raises(ValueError, match='unknown mask generator'):
        make_mask_generator('segment-anything')


@pytest.mark.parametrize('backend', ['geometric', 'simulated'])
def test_masks_command_writes_the_precomputed_layout(tmp_path, backend):
    sequence_dir = tmp_path / 'scene'
    config = synthetic.SyntheticSceneConfig(num_frames=4, width=320, height=240,
                                            focal_px=262.5, seed=3)
    synthetic.write_synthetic_sequence(sequence_dir, config, progress=False)
    out = tmp_path / 'masks'
    args = argparse.Namespace(sequence=str(sequence_dir), backend=backend, out=str(out),
                              every=2, clip_checkpoint='', no_clip=True, device='cpu',
                              cropformer_config='', cropformer_checkpoint='', seed=0)
    assert masks_command.run(args) == 0
    for stem in ('0', '2'):
        obs = read_mask_observation(out, stem)
        assert obs is not None and obs.labels.shape == (240, 320) and obs.num_masks >= 3
        assert obs.scores is not None and obs.scores.shape[0] >= obs.num_masks
        assert (obs.features is not None) == (backend == 'simulated')
    assert read_mask_observation(out, '1') is None
