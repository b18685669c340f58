"""Config dataclasses: validation names the field, dict mapping rejects unknown keys."""

import dataclasses

import pytest

from onlineanyseg_ros.core.config import (config_from_dict, config_to_dict, reference_config,
                                          SegmenterConfig)


def test_defaults_are_valid_and_round_trip_through_dict():
    config = SegmenterConfig()
    assert config_from_dict(SegmenterConfig, config_to_dict(config)) == config


def test_every_field_has_a_description():
    for field in dataclasses.fields(SegmenterConfig):
        assert field.metadata['description'], field.name


@pytest.mark.parametrize('name, value', [
    ('voxel_size_m', 0.0), ('voxel_size_m', float('nan')), ('coverage_min', 1.5),
    ('merge_every_n_keyframes', 0), ('descriptor', 'sift'), ('min_mask_pixels', 2.5),
    ('inactive_term_credit', True),
])
def test_invalid_value_raises_naming_the_field(name, value):
    with pytest.raises(ValueError, match=name):
        SegmenterConfig(**{name: value})


def test_int_is_accepted_for_float_fields():
    config = SegmenterConfig(depth_far_m=6)
    assert config.depth_far_m == 6.0 and isinstance(config.depth_far_m, float)


def test_cross_field_rule():
    with pytest.raises(ValueError, match='depth_far_m'):
        SegmenterConfig(depth_near_m=3.0, depth_far_m=2.0)


def test_unknown_key_is_an_error():
    with pytest.raises(ValueError, match='unknown SegmenterConfig parameter'):
        config_from_dict(SegmenterConfig, {'voxel_size': 0.02})


def test_from_dict_overrides_a_base():
    config = config_from_dict(SegmenterConfig, {'coverage_min': 0.5}, base=reference_config())
    assert config.coverage_min == 0.5
    assert config.inactive_term_credit == 0.0
