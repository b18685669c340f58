"""The ament_python package metadata is complete and consistent."""

import ast
import importlib
import pathlib
import xml.etree.ElementTree as ElementTree

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup_call():
    tree = ast.parse((ROOT / 'setup.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'setup':
            return {kw.arg: kw.value for kw in node.keywords}
    raise AssertionError('setup() call not found')


def test_package_xml_is_format_3_ament_python_with_runtime_deps():
    root = ElementTree.parse(ROOT / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'onlineanyseg_ros'
    assert root.find('export/build_type').text == 'ament_python'
    exec_depends = {element.text for element in root.findall('exec_depend')}
    for dependency in ('rclpy', 'sensor_msgs', 'geometry_msgs', 'visualization_msgs',
                       'std_msgs', 'std_srvs', 'diagnostic_msgs', 'tf2_ros', 'python3-numpy'):
        assert dependency in exec_depends


def test_resource_marker_and_setup_cfg_script_dir():
    assert (ROOT / 'resource' / 'onlineanyseg_ros').is_file()
    setup_cfg = (ROOT / 'setup.cfg').read_text()
    assert 'install_scripts=$base/lib/onlineanyseg_ros' in setup_cfg
    assert 'script_dir=$base/lib/onlineanyseg_ros' in setup_cfg


def test_console_scripts_point_at_callables():
    entry_points = ast.literal_eval(_setup_call()['entry_points'])
    scripts = entry_points['console_scripts']
    assert any(script.startswith('onlineanyseg =') for script in scripts)
    for script in scripts:
        name, target = (part.strip() for part in script.split('='))
        module_name, function_name = target.split(':')
        module = importlib.import_module(module_name)
        assert callable(getattr(module, function_name)), script


def test_versions_agree():
    import onlineanyseg_ros
    root = ElementTree.parse(ROOT / 'package.xml').getroot()
    assert root.findtext('version') == onlineanyseg_ros.__version__
    assert ast.literal_eval(_setup_call()['version']) == onlineanyseg_ros.__version__
