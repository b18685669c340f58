"""The launch files start the package's executables with existing files and matching remaps.

`launch` and `launch_ros` are not installable here, so the files are read with `ast`: the
calls to Node, ExecuteProcess and DeclareLaunchArgument are evaluated by a small evaluator
that knows string literals, lists, dicts, module constants, local assignments, os.path.join and
LaunchConfiguration. Where `launch` is importable (a robot install), one test also builds
the real launch descriptions.
"""

import ast
from dataclasses import dataclass
import importlib.util
import pathlib

import pytest

from onlineanyseg_ros.data.bag import BagLayout

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH_DIR = ROOT / 'launch'
PACKAGE = 'onlineanyseg_ros'
LAUNCH_FILES = ('live.launch.py', 'replay.launch.py')
NODE_EXECUTABLES = {'perception_node', 'segmentation_node'}
REQUIRED_CONSOLE_SCRIPTS = {'perception_node', 'segmentation_node', 'pipeline'}
# Relative inputs of the perception node (architecture.md topics table); the tests read them
# from perception_node.py's create_subscription calls where that module exists.
PERCEPTION_INPUTS = {'color/image', 'depth/image', 'depth/camera_info', 'camera_pose'}
REQUIRED_ARGUMENTS = {
    'live.launch.py': {'namespace', 'params_file', 'use_sim_time', 'rviz', 'device',
                       'log_level', 'color_topic', 'depth_topic', 'camera_info_topic'},
    'replay.launch.py': {'bag', 'rate', 'loop', 'params_file', 'rviz'},
}


@dataclass(frozen=True)
class Config:
    """A LaunchConfiguration('name') found in a launch file."""

    name: str


@dataclass(frozen=True)
class Share:
    """The result of get_package_share_directory(package)."""

    package: str


@dataclass(frozen=True)
class Opaque:
    """An expression the evaluator does not model (kept as its source text)."""

    source: str


class LaunchFileReader:
    """Evaluate the action calls of one launch file from its syntax tree."""

    def __init__(self, path: pathlib.Path):
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.names = {}
        for statement in ast.walk(self.tree):
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and \
                    isinstance(statement.targets[0], ast.Name):
                self.names[statement.targets[0].id] = statement.value

    def calls(self, function_name):
        """Return ``{keyword: value}`` of every call of ``function_name`` (positional: 0, 1...)."""
        found = []
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call) and _callee(node) == function_name:
                arguments = {index: self.evaluate(arg) for index, arg in enumerate(node.args)}
                arguments.update({kw.arg: self.evaluate(kw.value) for kw in node.keywords})
                found.append(arguments)
        return found

    def evaluate(self, node):
        """Return the value of an expression, with launch substitutions as markers."""
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = []
            for element in node.elts:
                if isinstance(element, ast.Starred):
                    items.extend(self.evaluate(element.value))
                else:
                    items.append(self.evaluate(element))
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict):
            return {self.evaluate(key): self.evaluate(value)
                    for key, value in zip(node.keys, node.values)}
        if isinstance(node, ast.Name) and node.id in self.names:
            return self.evaluate(self.names[node.id])
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.evaluate(node.left) + self.evaluate(node.right)
        if isinstance(node, ast.ListComp):
            return self._list_comprehension(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        return Opaque(ast.unparse(node))

    def _call(self, node):
        callee = _callee(node)
        arguments = [self.evaluate(arg) for arg in node.args]
        if callee == 'LaunchConfiguration':
            return Config(arguments[0])
        if callee == 'get_package_share_directory':
            return Share(arguments[0])
        if callee == 'join' and isinstance(arguments[0], Share):
            return (arguments[0],) + tuple(arguments[1:])
        return Opaque(ast.unparse(node))

    def _list_comprehension(self, node):
        # Only the form [element for target(s) in iterable] over an evaluable iterable.
        generator = node.generators[0]
        values = []
        for item in self.evaluate(generator.iter):
            scope = dict(self.names)
            targets = generator.target.elts if isinstance(generator.target, ast.Tuple) \
                else [generator.target]
            items = item if isinstance(generator.target, ast.Tuple) else [item]
            for target, value in zip(targets, items):
                scope[target.id] = ast.Constant(value)
            saved, self.names = self.names, scope
            values.append(self.evaluate(node.elt))
            self.names = saved
        return values


def _callee(call):
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, 'attr', '')


def _reader(name):
    return LaunchFileReader(LAUNCH_DIR / name)


def _arguments(reader):
    return {call[0]: call for call in reader.calls('DeclareLaunchArgument')}


def _nodes(reader):
    return {call['executable']: call for call in reader.calls('Node')}


def _console_scripts():
    tree = ast.parse((ROOT / 'setup.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node) == 'setup':
            keywords = {kw.arg: kw.value for kw in node.keywords}
            scripts = ast.literal_eval(keywords['entry_points'])['console_scripts']
            return {script.split('=')[0].strip() for script in scripts}
    raise AssertionError('setup() call not found in setup.py')


def _resolve(value, arguments):
    """Replace a LaunchConfiguration by its argument's default value."""
    if isinstance(value, Config):
        return arguments[value.name]['default_value']
    return value


def _share_file(value):
    """Return the package-relative path of a (Share, 'dir', 'file') join."""
    assert isinstance(value, tuple) and value[0] == Share(PACKAGE), value
    return ROOT.joinpath(*value[1:])


def _subscribed_input_names():
    """Return the relative topics perception_node.py subscribes to (the table's, if absent)."""
    path = ROOT / 'onlineanyseg_ros' / 'ros' / 'perception_node.py'
    if not path.exists():
        return PERCEPTION_INPUTS
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and _callee(node) == 'create_subscription' and \
                isinstance(node.args[1], ast.Constant):
            names.add(node.args[1].value)
    return {name for name in names if not name.startswith('/')}


@pytest.mark.parametrize('launch_file', LAUNCH_FILES)
def test_required_arguments_are_declared_with_descriptions(launch_file):
    arguments = _arguments(_reader(launch_file))
    assert REQUIRED_ARGUMENTS[launch_file] <= set(arguments)
    for name, call in arguments.items():
        assert isinstance(call.get('description'), str) and call['description'], name


@pytest.mark.parametrize('launch_file', LAUNCH_FILES)
def test_started_executables_are_console_scripts_of_this_package(launch_file):
    nodes = _nodes(_reader(launch_file))
    assert NODE_EXECUTABLES <= set(nodes)
    scripts = _console_scripts()
    for executable in NODE_EXECUTABLES:
        assert nodes[executable]['package'] == PACKAGE
        assert nodes[executable]['name'] == executable
        assert executable in scripts, f'{executable} is not a console_script in setup.py'


def test_setup_declares_the_node_and_pipeline_console_scripts():
    assert REQUIRED_CONSOLE_SCRIPTS <= _console_scripts()


@pytest.mark.parametrize('launch_file, params_file', [('live.launch.py', 'onlineanyseg.yaml'),
                                                      ('replay.launch.py', 'scannet.yaml')])
def test_default_params_file_exists_and_reaches_both_nodes(launch_file, params_file):
    reader = _reader(launch_file)
    default = _arguments(reader)['params_file']['default_value']
    assert _share_file(default) == ROOT / 'config' / params_file
    assert (ROOT / 'config' / params_file).is_file()
    for executable in NODE_EXECUTABLES:
        parameters = _nodes(reader)[executable]['parameters']
        assert parameters[0] == Config('params_file')


@pytest.mark.parametrize('launch_file', LAUNCH_FILES)
def test_rviz_starts_only_on_request_with_the_package_config(launch_file):
    reader = _reader(launch_file)
    rviz = _nodes(reader)['rviz2']
    assert rviz['package'] == 'rviz2'
    assert rviz['condition'] == Opaque("IfCondition(LaunchConfiguration('rviz'))")
    flag, path = rviz['arguments']
    assert flag == '-d' and _share_file(path) == ROOT / 'rviz' / 'onlineanyseg.rviz'
    assert _share_file(path).is_file()


def test_live_remaps_every_perception_input_to_a_camera_argument():
    reader = _reader('live.launch.py')
    arguments = _arguments(reader)
    remappings = dict(_nodes(reader)['perception_node']['remappings'])
    assert set(remappings) == _subscribed_input_names() == PERCEPTION_INPUTS
    resolved = {source: _resolve(target, arguments) for source, target in remappings.items()}
    assert resolved['color/image'] == '/camera/camera/color/image_raw'
    assert resolved['depth/image'] == '/camera/camera/aligned_depth_to_color/image_raw'
    assert resolved['depth/camera_info'] == \
        '/camera/camera/aligned_depth_to_color/camera_info'
    assert all(topic.startswith('/') for topic in resolved.values())


def test_live_passes_device_sim_time_and_log_level_to_both_nodes():
    nodes = _nodes(_reader('live.launch.py'))
    for executable in NODE_EXECUTABLES:
        node = nodes[executable]
        overrides = node['parameters'][1]
        assert set(overrides) == {'use_sim_time', 'device'}
        assert 'use_sim_time' in overrides['use_sim_time'].source
        assert "LaunchConfiguration('device')" in overrides['device'].source
        assert node['ros_arguments'] == ['--log-level', Config('log_level')]
        assert node['namespace'] == Config('namespace')


def test_replay_remaps_match_the_bag_layout_topics():
    layout = BagLayout()
    reader = _reader('replay.launch.py')
    remappings = dict(_nodes(reader)['perception_node']['remappings'])
    assert set(remappings) == _subscribed_input_names()
    assert remappings == {'color/image': layout.color_topic, 'depth/image': layout.depth_topic,
                          'depth/camera_info': layout.depth_info_topic,
                          'camera_pose': layout.pose_topic}


def test_replay_plays_the_inputs_on_sim_time_and_loops_on_request():
    layout = BagLayout()
    reader = _reader('replay.launch.py')
    commands = {tuple(call['cmd'])[-1] == '--loop': call for call in
                reader.calls('ExecuteProcess')}
    assert set(commands) == {True, False}
    once, looped = commands[False], commands[True]
    assert once['condition'] == Opaque("UnlessCondition(LaunchConfiguration('loop'))")
    assert looped['condition'] == Opaque("IfCondition(LaunchConfiguration('loop'))")
    command = once['cmd']
    assert command[:4] == ['ros2', 'bag', 'play', Config('bag')]
    assert '--clock' in command
    assert command[command.index('--rate') + 1] == Config('rate')
    played = command[command.index('--topics') + 1:]
    assert set(played) == {layout.color_topic, layout.depth_topic, layout.depth_info_topic,
                           layout.pose_topic, layout.tf_topic, layout.tf_static_topic}
    assert not any(topic.startswith(layout.keyframe_namespace) for topic in played)
    for executable in NODE_EXECUTABLES:
        assert _nodes(reader)[executable]['parameters'][1] == {'use_sim_time': True}


@pytest.mark.parametrize('launch_file', LAUNCH_FILES)
def test_launch_description_loads_where_launch_is_installed(launch_file):
    launch = pytest.importorskip('launch')
    pytest.importorskip('launch_ros')
    packages = pytest.importorskip('ament_index_python.packages')
    try:
        packages.get_package_share_directory(PACKAGE)
    except packages.PackageNotFoundError:
        pytest.skip(f'{PACKAGE} is not installed (no share directory)')
    spec = importlib.util.spec_from_file_location('launch_under_test', LAUNCH_DIR / launch_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, launch.LaunchDescription)
    declared = {argument.name for argument in description.get_launch_arguments()}
    assert REQUIRED_ARGUMENTS[launch_file] <= declared
