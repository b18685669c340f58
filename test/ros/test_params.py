"""Config dataclasses map one-to-one onto declared, described, range-checked parameters."""

import os
import random

import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.parameter import Parameter  # noqa: E402, I202

from onlineanyseg_ros.core.config import SegmenterConfig  # noqa: E402
from onlineanyseg_ros.ros.params import (ConfigError, declare_config,  # noqa: E402
                                         reject_unknown_parameters)

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_DOMAIN_ID', str(random.randint(1, 200)))


@pytest.fixture
def context():
    context = rclpy.context.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


def _node(context, overrides):
    return rclpy.create_node('params_test', context=context,
                             parameter_overrides=[Parameter(k, value=v)
                                                  for k, v in overrides.items()])


def test_defaults_declared_with_descriptions(context):
    node = _node(context, {})
    config = declare_config(node, SegmenterConfig, prefix='segmenter.')
    assert config == SegmenterConfig()
    descriptor = node.describe_parameter('segmenter.voxel_size_m')
    assert 'Voxel edge' in descriptor.description
    assert descriptor.read_only
    assert descriptor.floating_point_range[0].to_value == pytest.approx(0.2)
    node.destroy_node()


def test_overrides_apply_and_int_is_accepted_for_float(context):
    node = _node(context, {'segmenter.voxel_size_m': 0.05, 'segmenter.depth_far_m': 6,
                           'segmenter.descriptor': 'none'})
    config = declare_config(node, SegmenterConfig, prefix='segmenter.')
    assert config.voxel_size_m == 0.05
    assert config.depth_far_m == 6.0
    assert config.descriptor == 'none'
    node.destroy_node()


@pytest.mark.parametrize('name, value', [
    ('segmenter.voxel_size_m', 5.0),           # outside the declared range
    ('segmenter.descriptor', 'sift'),          # not one of the choices
    ('segmenter.min_mask_pixels', 'many'),     # wrong type
])
def test_invalid_value_names_the_parameter(context, name, value):
    node = _node(context, {name: value})
    with pytest.raises(ConfigError, match=name.replace('.', r'\.')):
        declare_config(node, SegmenterConfig, prefix='segmenter.')
    node.destroy_node()


def test_unknown_parameter_is_rejected(context):
    node = _node(context, {'segmenter.voxel_sise_m': 0.05})
    declare_config(node, SegmenterConfig, prefix='segmenter.')
    with pytest.raises(ConfigError, match='segmenter.voxel_sise_m'):
        reject_unknown_parameters(node)
    node.destroy_node()
