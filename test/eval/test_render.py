"""Point splatting puts points where the camera model says, nearest on top."""

import numpy as np

from onlineanyseg_ros.eval.render import render_views, save_png, splat


def test_splat_projects_and_depth_orders():
    # Two points on the optical axis of an identity camera: the nearer (red) must win.
    points = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 1.0], [0.5, 0.0, 1.0]])
    colors = np.array([[0, 0, 255], [255, 0, 0], [0, 255, 0]], np.uint8)
    image = splat(points, colors, np.eye(3), np.zeros(3), focal=100.0, size=(101, 101),
                  radius_px=0)
    assert tuple(image[50, 50]) == (255, 0, 0)
    # x = 0.5 m at 1 m depth lands 50 px right of the centre.
    assert tuple(image[50, 100]) == (0, 255, 0)
    assert (image == 255).all(axis=2).sum() == 101 * 101 - 2


def test_render_views_and_png(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (2000, 3))
    colors = rng.integers(0, 255, (2000, 3), dtype=np.uint8)
    image = render_views(points, colors, size=(60, 80), title='x')
    assert image.shape == (60, 160, 3)
    # Both views show something that is not background.
    assert (image[:, :80] != 255).any() and (image[:, 80:] != 255).any()
    save_png(tmp_path / 'views.png', image)
    assert (tmp_path / 'views.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
