"""The ROS-free layers must import and work without rclpy or any ROS message package."""

import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROS_FREE_LAYERS = ('core', 'perception', 'data', 'eval')

BLOCKING_IMPORTER = textwrap.dedent("""
    import importlib, pkgutil, sys
    BLOCKED = ('rclpy', 'rosidl_runtime_py', 'sensor_msgs', 'geometry_msgs', 'std_msgs',
               'std_srvs', 'visualization_msgs', 'diagnostic_msgs', 'builtin_interfaces',
               'tf2_ros', 'tf2_msgs', 'rosgraph_msgs')

    class BlockRos:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                raise ImportError(f'ROS module {name} imported from a ROS-free layer')
            return None

    sys.meta_path.insert(0, BlockRos())
    import onlineanyseg_ros
    imported = []
    for layer in LAYERS:
        package = importlib.import_module(f'onlineanyseg_ros.{layer}')
        imported.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):
            importlib.import_module(info.name)
            imported.append(info.name)
    print('\\n'.join(imported))
""")


def test_ros_free_layers_import_with_ros_blocked():
    code = f'LAYERS = {ROS_FREE_LAYERS!r}\n' + BLOCKING_IMPORTER
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split())
    # Every module file of the ROS-free layers was imported (none silently skipped).
    for layer in ROS_FREE_LAYERS:
        for path in (ROOT / 'onlineanyseg_ros' / layer).glob('*.py'):
            name = f'onlineanyseg_ros.{layer}.{path.stem}'.replace('.__init__', '')
            assert name in imported, f'{name} was not imported'


def test_blocker_really_blocks_ros():
    code = 'LAYERS = ()\n' + BLOCKING_IMPORTER + '\nimport rclpy\n'
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert 'ROS module rclpy imported from a ROS-free layer' in result.stderr
