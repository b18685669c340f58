"""The RViz2 config shows the nodes' outputs in the world frame."""

import ast
import pathlib

import pytest
import yaml

from onlineanyseg_ros.ros.node_config import PerceptionNodeConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
RVIZ_FILE = ROOT / 'rviz' / 'onlineanyseg.rviz'
# Outputs to show (architecture.md), absolute as RViz subscribes in the root namespace.
SHOWN_TOPICS = {'/instances/cloud', '/instances/markers', '/query/markers', '/query/cloud',
                '/keyframe/masks'}
LATCHED_TOPICS = {'/instances/cloud', '/instances/markers', '/query/markers', '/query/cloud'}
DURABILITY_NAMES = {'TRANSIENT_LOCAL': 'Transient Local', 'VOLATILE': 'Volatile'}


def _config():
    return yaml.safe_load(RVIZ_FILE.read_text())


def _displays(displays=None):
    """Return every display, descending into groups."""
    found = []
    for display in displays if displays is not None else \
            _config()['Visualization Manager']['Displays']:
        found.append(display)
        found.extend(_displays(display.get('Displays', [])))
    return found


def _topic_displays():
    return {display['Topic']['Value']: display for display in _displays() if 'Topic' in display}


def _published_topics():
    """Return the topics the node modules publish, read from their source.

    Literal names of ``create_publisher`` calls in ``onlineanyseg_ros/ros``, plus the
    ``keyframe/...`` names the segmentation node subscribes to (the perception node builds
    them with an f-string). Falls back to the architecture table when no module exists yet.
    """
    topics = set()
    for path in (ROOT / 'onlineanyseg_ros' / 'ros').glob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, 'attr', '') == \
                    'create_publisher' and isinstance(node.args[1], ast.Constant):
                topics.add(node.args[1].value)
            elif path.name == 'segmentation_node.py' and isinstance(node, ast.Constant) and \
                    isinstance(node.value, str) and node.value.startswith('keyframe/'):
                topics.add(node.value)
    return {'/' + topic for topic in topics} or SHOWN_TOPICS


def test_fixed_frame_is_the_world_frame_default():
    options = _config()['Visualization Manager']['Global Options']
    assert options['Fixed Frame'] == PerceptionNodeConfig().world_frame


def test_every_topic_is_one_the_nodes_publish():
    topics = set(_topic_displays())
    assert topics == SHOWN_TOPICS
    assert topics <= _published_topics()


def test_instance_cloud_is_drawn_as_rgb_points():
    cloud = _topic_displays()['/instances/cloud']
    assert cloud['Class'] == 'rviz_default_plugins/PointCloud2'
    assert cloud['Color Transformer'] == 'RGB8'
    assert cloud['Style'] == 'Points'
    assert cloud['Enabled'] is True


def test_markers_masks_and_tf_have_their_displays():
    topics = _topic_displays()
    assert topics['/instances/markers']['Class'] == 'rviz_default_plugins/MarkerArray'
    assert topics['/query/markers']['Class'] == 'rviz_default_plugins/MarkerArray'
    assert topics['/keyframe/masks']['Class'] == 'rviz_default_plugins/Image'
    classes = {display['Class'] for display in _displays()}
    assert 'rviz_default_plugins/TF' in classes


def test_view_orbits_the_fixed_frame():
    view = _config()['Visualization Manager']['Views']['Current']
    assert view['Class'] == 'rviz_default_plugins/Orbit'
    assert view['Target Frame'] == '<Fixed Frame>'
    assert 0.0 < view['Pitch'] < 1.57 and view['Distance'] > 0


def test_map_displays_subscribe_with_the_map_output_qos():
    qos = pytest.importorskip('onlineanyseg_ros.ros.qos')
    profile = qos.map_output_qos()
    topics = _topic_displays()
    for topic in LATCHED_TOPICS:
        settings = topics[topic]['Topic']
        assert settings['Durability Policy'] == DURABILITY_NAMES[profile.durability.name]
        assert settings['Reliability Policy'] == profile.reliability.name.capitalize()
        assert settings['Depth'] == profile.depth
