"""The ROS 2 parameter files in config/ name only real parameters, validate and load as is."""

from dataclasses import fields
import os
import pathlib
import random

import pytest
import yaml

from onlineanyseg_ros.core.config import (config_from_dict, segmenter_config,
                                          segmenter_overrides_from_yaml, SegmenterConfig)
from onlineanyseg_ros.ros.node_config import PerceptionNodeConfig, SegmentationNodeConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / 'config'
CONFIG_FILES = ('onlineanyseg.yaml', 'scannet.yaml', 'synthetic.yaml')
SEGMENTER_PREFIX = 'segmenter.'
# Node keys carry /**/ so the files also apply in a namespace (launch argument namespace).
NODE_KEYS = {'perception_node': '/**/perception_node',
             'segmentation_node': '/**/segmentation_node'}


def _field_names(cls):
    return {field.name for field in fields(cls)}


def _node_parameters(config_file, node):
    document = yaml.safe_load((CONFIG_DIR / config_file).read_text())
    return document[NODE_KEYS[node]]['ros__parameters']


def _split_segmentation(parameters):
    """Return (node parameters, segmenter overrides without the prefix)."""
    node = {key: value for key, value in parameters.items()
            if not key.startswith(SEGMENTER_PREFIX)}
    segmenter = {key[len(SEGMENTER_PREFIX):]: value for key, value in parameters.items()
                 if key.startswith(SEGMENTER_PREFIX)}
    return node, segmenter


def _configs(config_file):
    """Build the three configs a file describes (raises ValueError on a bad key or value)."""
    perception = config_from_dict(PerceptionNodeConfig,
                                  _node_parameters(config_file, 'perception_node'))
    node, segmenter = _split_segmentation(_node_parameters(config_file, 'segmentation_node'))
    segmentation = config_from_dict(SegmentationNodeConfig, node)
    return perception, segmentation, segmenter_config(segmentation.profile, segmenter)


@pytest.mark.parametrize('config_file', CONFIG_FILES)
def test_file_holds_exactly_the_two_nodes(config_file):
    document = yaml.safe_load((CONFIG_DIR / config_file).read_text())
    assert set(document) == set(NODE_KEYS.values())
    for node_values in document.values():
        assert set(node_values) == {'ros__parameters'}


@pytest.mark.parametrize('config_file', CONFIG_FILES)
def test_every_key_is_a_field_and_every_node_field_is_listed(config_file):
    perception = _node_parameters(config_file, 'perception_node')
    assert set(perception) == _field_names(PerceptionNodeConfig)
    node, segmenter = _split_segmentation(_node_parameters(config_file, 'segmentation_node'))
    assert set(node) == _field_names(SegmentationNodeConfig)
    assert segmenter and set(segmenter) <= _field_names(SegmenterConfig)


@pytest.mark.parametrize('config_file', CONFIG_FILES)
def test_values_have_the_field_types_and_validate(config_file):
    for config in _configs(config_file):
        defaults = type(config)()
        for field in fields(config):
            assert type(getattr(config, field.name)) is type(getattr(defaults, field.name))


def test_unknown_key_is_rejected_by_the_same_mapping():
    parameters = dict(_node_parameters('onlineanyseg.yaml', 'perception_node'))
    parameters['keyframe_every_n_frame'] = 5
    with pytest.raises(ValueError, match='keyframe_every_n_frame'):
        config_from_dict(PerceptionNodeConfig, parameters)


def test_base_file_holds_the_project_defaults():
    perception, segmentation, segmenter = _configs('onlineanyseg.yaml')
    assert perception == PerceptionNodeConfig()
    assert segmentation == SegmentationNodeConfig()
    assert segmenter == SegmenterConfig()


def test_scannet_file_follows_the_method_schedule():
    perception, segmentation, segmenter = _configs('scannet.yaml')
    assert perception.pose_source == 'topic'
    assert segmenter.depth_far_m == 5.0
    # A keyframe every 10 frames and a merge every 5 keyframes: a merge every 50 frames.
    assert perception.keyframe_every_n_frames * segmenter.merge_every_n_keyframes == 50


def test_synthetic_file_runs_without_weights_on_cpu():
    perception, segmentation, _ = _configs('synthetic.yaml')
    assert perception.mask_generator == 'geometric'
    assert perception.device == segmentation.device == 'cpu'
    assert perception.clip_checkpoint == segmentation.clip_checkpoint == ''


@pytest.mark.parametrize('config_file', CONFIG_FILES)
def test_offline_reader_sees_the_segmenter_entries(config_file):
    _, segmenter = _split_segmentation(_node_parameters(config_file, 'segmentation_node'))
    assert segmenter_overrides_from_yaml(str(CONFIG_DIR / config_file)) == segmenter


@pytest.fixture
def rclpy_context(monkeypatch):
    """Yield an rclpy Context on loopback discovery in a random domain."""
    rclpy = pytest.importorskip('rclpy')
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    monkeypatch.setenv('ROS_DOMAIN_ID', os.environ.get('ROS_DOMAIN_ID',
                                                       str(random.randint(1, 200))))
    context = rclpy.context.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


def _node_from_file(context, name, config_file):
    """Create node ``name`` in a namespace with the file, check every entry reached it."""
    import rclpy
    # A namespace proves the node keys match outside the root namespace too.
    node = rclpy.create_node(name, namespace='robot1', context=context,
                             cli_args=['--ros-args', '--params-file',
                                       str(CONFIG_DIR / config_file)])
    # rclpy has no public accessor of the overrides; params.py reads the same attribute.
    assert set(node._parameter_overrides) == set(_node_parameters(config_file, name))
    return node


@pytest.mark.parametrize('config_file', CONFIG_FILES)
def test_parameter_file_loads_into_nodes_as_the_same_configs(rclpy_context, config_file):
    from onlineanyseg_ros.ros.params import declare_config, reject_unknown_parameters
    perception, segmentation, segmenter = _configs(config_file)

    node = _node_from_file(rclpy_context, 'perception_node', config_file)
    try:
        assert declare_config(node, PerceptionNodeConfig) == perception
        reject_unknown_parameters(node)
    finally:
        node.destroy_node()

    node = _node_from_file(rclpy_context, 'segmentation_node', config_file)
    try:
        loaded = declare_config(node, SegmentationNodeConfig)
        assert loaded == segmentation
        base = segmenter_config(loaded.profile)
        assert declare_config(node, SegmenterConfig, SEGMENTER_PREFIX, base=base) == segmenter
        reject_unknown_parameters(node)
    finally:
        node.destroy_node()
