"""Frame bundles validate at the boundary."""

import numpy as np
import pytest

from onlineanyseg_ros.core.types import is_rigid_transform, MaskObservation, RgbdFrame


def _frame(**overrides):
    values = {'color': np.zeros((4, 5, 3), np.uint8), 'depth': np.ones((4, 5), np.float32),
              'K': np.eye(3), 'T_world_camera': np.eye(4)}
    values.update(overrides)
    return RgbdFrame(**values)


def test_valid_frame():
    assert _frame().shape == (4, 5)


def test_rigidity():
    T = np.eye(4)
    T[:3, 3] = [1, 2, 3]
    assert is_rigid_transform(T)
    T[0, 0] = np.nan
    assert not is_rigid_transform(T)
    assert not is_rigid_transform(np.diag([2.0, 1, 1, 1]))
    assert not is_rigid_transform(np.diag([-1.0, 1, 1, 1]))  # reflection


@pytest.mark.parametrize('overrides, message', [
    ({'depth': np.ones((4, 5), np.float64)}, 'depth'),
    ({'color': np.zeros((4, 6, 3), np.uint8)}, 'color'),
    ({'K': np.eye(4)}, 'K'),
    ({'T_world_camera': np.full((4, 4), np.nan)}, 'T_world_camera'),
])
def test_invalid_frames(overrides, message):
    with pytest.raises(ValueError, match=message):
        _frame(**overrides)


def test_mask_observation_checks_feature_rows():
    labels = np.array([[0, 1], [2, 3]], np.int32)
    assert MaskObservation(labels, np.zeros((3, 8), np.float32)).num_masks == 3
    with pytest.raises(ValueError, match='features has 2 rows'):
        MaskObservation(labels, np.zeros((2, 8), np.float32))
