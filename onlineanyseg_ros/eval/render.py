"""Render a labeled point cloud to a PNG: a top-down and a perspective view side by side."""

import pathlib
from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw

from onlineanyseg_ros.data.io import atomic_write


def _look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Return the 3x3 world-to-camera rotation (optical: x right, y down, z forward)."""
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


def splat(points: np.ndarray, colors: np.ndarray, R: np.ndarray, t: np.ndarray, focal: float,
          size: Tuple[int, int], radius_px: int = 1, orthographic: bool = False) -> np.ndarray:
    """Z-buffered splatting of ``points`` (N,3 world) with ``colors`` (N,3 uint8).

    Args:
        points: float ``(N, 3)`` world frame.
        colors: uint8 ``(N, 3)``.
        R, t: world-to-camera rotation (3,3) and translation (3,).
        focal: pixels per unit depth (perspective) or pixels per metre (orthographic).
        size: ``(height, width)`` of the image.
        radius_px: half size of the square drawn per point.
        orthographic: project without dividing by depth.

    Returns:
        uint8 ``(H, W, 3)`` image on a white background.

    """
    height, width = size
    camera = points @ R.T + t
    z = camera[:, 2]
    visible = z > 1e-3
    camera, colors, z = camera[visible], colors[visible], z[visible]
    scale = focal if orthographic else focal / z
    u = np.round(camera[:, 0] * scale + width / 2).astype(np.int64)
    v = np.round(camera[:, 1] * scale + height / 2).astype(np.int64)
    image = np.full((height, width, 3), 255, np.uint8)
    depth = np.full(height * width, np.inf)
    # Far points first so that nearer ones overwrite them; the depth buffer settles ties.
    order = np.argsort(-z)
    for du in range(-radius_px, radius_px + 1):
        for dv in range(-radius_px, radius_px + 1):
            uu, vv = u[order] + du, v[order] + dv
            inside = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
            flat = vv[inside] * width + uu[inside]
            nearer = z[order][inside] <= depth[flat]
            depth[flat[nearer]] = z[order][inside][nearer]
            image.reshape(-1, 3)[flat[nearer]] = colors[order][inside][nearer]
    return image


def render_views(points: np.ndarray, colors: np.ndarray, size: Tuple[int, int] = (480, 640),
                 title: str = '') -> np.ndarray:
    """Top-down (orthographic) and perspective views side by side, uint8 ``(H, 2W, 3)``.

    The scene's up axis is taken as +z (ScanNet convention).
    """
    height, width = size
    low, high = points.min(0), points.max(0)
    center = (low + high) / 2
    extent = float(np.max(high[:2] - low[:2])) + 1e-6
    up = np.array([0.0, 0.0, 1.0])
    eye_top = center + np.array([0.0, 0.0, 10.0])
    R_top = _look_at(eye_top, center, np.array([0.0, 1.0, 0.0]))
    top = splat(points, colors, R_top, -R_top @ eye_top, 0.9 * min(height, width) / extent,
                size, orthographic=True)
    eye = center + np.array([0.9, -1.1, 0.9]) * extent
    R_persp = _look_at(eye, center, up)
    perspective = splat(points, colors, R_persp, -R_persp @ eye, 0.9 * width, size)
    canvas = np.concatenate([top, perspective], axis=1)
    if title:
        image = Image.fromarray(canvas)
        ImageDraw.Draw(image).text((8, 8), title, fill=(0, 0, 0))
        canvas = np.asarray(image)
    return canvas


def save_png(path: pathlib.Path, image: np.ndarray) -> None:
    """Write ``image`` (uint8 HxWx3) as PNG atomically."""
    with atomic_write(path) as handle:
        Image.fromarray(image).save(handle, format='PNG')
