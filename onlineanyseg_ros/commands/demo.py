"""`onlineanyseg demo`: the embedded default end to end, on CPU, without model weights.

1. render a synthetic room with ground truth (ScanNet layout);
2. write it as a rosbag2 bag (colour, depth, camera_info, /tf, camera pose);
3. start the perception node (weight-free geometric masks) and the segmentation node in one
   process (`onlineanyseg_ros.ros.pipeline`) and play the bag into them over real DDS;
4. call `save_map`, render a PNG of the instances, print AP/AP50/AP25 and stage timings.
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from typing import Optional


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    parser = subparsers.add_parser(
        'demo', help='run the embedded default end to end (synthetic room, bag, live nodes)',
        description=__doc__)
    parser.add_argument('--out', default='demo_output', help='output folder')
    parser.add_argument('--frames', type=int, default=300, help='frames to render (30 Hz)')
    parser.add_argument('--seed', type=int, default=0, help='scene seed')
    parser.add_argument('--rate', type=float, default=0.5, help='bag playback rate')
    parser.add_argument('--timeout', type=float, default=240.0,
                        help='seconds to wait for the map after playback')
    parser.set_defaults(func=run)


def package_file(relative: str) -> pathlib.Path:
    """Return a file of the package: from its share directory when installed, else the repo."""
    try:
        from ament_index_python.packages import get_package_share_directory
        candidate = pathlib.Path(get_package_share_directory('onlineanyseg_ros')) / relative
        if candidate.exists():
            return candidate
    except (ImportError, LookupError, OSError):  # not installed, or no ament index
        pass
    return pathlib.Path(__file__).resolve().parents[2] / relative


def _params_file(out: pathlib.Path, keyframe_every: Optional[int] = None):
    """Write the demo parameter file (map under ``out``); return it and the keyframe interval."""
    import yaml
    document = yaml.safe_load(package_file('config/synthetic.yaml').read_text())
    for key, section in document.items():
        parameters = section['ros__parameters']
        if key.endswith('segmentation_node'):
            parameters['output_dir'] = str(out / 'map')
        if key.endswith('perception_node'):
            if keyframe_every is not None:
                parameters['keyframe_every_n_frames'] = keyframe_every
            keyframe_every = parameters['keyframe_every_n_frames']
    path = out / 'demo_params.yaml'
    path.write_text(yaml.safe_dump(document))
    return path, keyframe_every


def _prepare(out: pathlib.Path, frames: int, seed: int, size=(480, 640)):
    """Render the scene (cached) and write its bag; return (scene_dir, bag_dir, frames)."""
    from onlineanyseg_ros.data.bag import write_sequence_bag
    from onlineanyseg_ros.data.scannet import ScanNetSequence
    from onlineanyseg_ros.data.synthetic import SyntheticSceneConfig, write_synthetic_sequence

    scene_dir = out / 'scene0000_00'
    if not (scene_dir / 'meta.json').exists():
        height, width = size
        summary = write_synthetic_sequence(scene_dir, SyntheticSceneConfig(
            num_frames=frames, seed=seed, height=height, width=width,
            focal_px=525.0 * width / 640.0))
        print(f'[demo] synthetic room: {summary.num_instances} GT instances, '
              f'{summary.num_frames} frames, {summary.num_gt_points} GT points, '
              f'{summary.frames_per_second:.1f} frames/s')
    sequence = ScanNetSequence(scene_dir)
    bag_dir = out / 'bag'
    if bag_dir.exists():
        shutil.rmtree(bag_dir)
    bag = write_sequence_bag(sequence, bag_dir, storage='mcap', total=len(sequence))
    print(f'[demo] bag: {bag["messages"]} messages, {bag["duration_s"]:.1f} s -> {bag_dir}')
    return scene_dir, bag_dir, len(sequence)


def _start_pipeline(params: pathlib.Path) -> subprocess.Popen:
    """Start both nodes in one process, their inputs remapped to the bag's topics."""
    from onlineanyseg_ros.data.bag import BagLayout
    layout = BagLayout()
    command = [sys.executable, '-m', 'onlineanyseg_ros.ros.pipeline', '--ros-args',
               '--params-file', str(params)]
    for node_input, bag_topic in (('color/image', layout.color_topic),
                                  ('depth/image', layout.depth_topic),
                                  ('depth/camera_info', layout.depth_info_topic),
                                  ('camera_pose', layout.pose_topic)):
        command += ['-r', f'{node_input}:={bag_topic}']
    # One torch thread per process: the player and the nodes share two cores.
    return subprocess.Popen(command, env=dict(os.environ, OMP_NUM_THREADS='1'))


class NodeStatus:
    """The latest diagnostics values of the perception and segmentation nodes.

    ``values['perception']`` and ``values['segmentation']`` hold ``{key: value}`` strings as
    published on /diagnostics; a node is ``up`` once its first status arrived, i.e. once its
    executor spins.
    """

    NODES = ('perception', 'segmentation')

    def __init__(self, node) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from onlineanyseg_ros.ros.qos import diagnostics_qos
        self.values = {name: {} for name in self.NODES}
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                 diagnostics_qos())

    def _on_diagnostics(self, message) -> None:
        for status in message.status:
            for name in self.NODES:
                if name in status.name:
                    self.values[name].update({pair.key: pair.value for pair in status.values})

    def up(self) -> bool:
        """Whether both nodes have published diagnostics."""
        return all(self.values.values())

    def count(self, node_name: str, key: str) -> int:
        """Return the integer value ``key`` of one node (0 before it was published)."""
        return int(self.values[node_name].get(key, 0))


def _wait_until_up(status: NodeStatus, executor, pipeline: subprocess.Popen,
                   timeout_s: float = 120.0) -> None:
    """Spin until both nodes publish diagnostics, i.e. both executors spin.

    Playing earlier would feed a node that exists but does not spin yet (the other node is
    still loading): its keep-last input queues would overflow and frames be lost unseen.
    """
    deadline = time.monotonic() + timeout_s
    while not status.up():
        if pipeline.poll() is not None:
            raise RuntimeError(f'the nodes exited with status {pipeline.returncode}')
        if time.monotonic() > deadline:
            raise RuntimeError(f'the nodes published no diagnostics within {timeout_s:.0f} s')
        executor.spin_once(timeout_sec=0.2)


def _wait_for_map(status: NodeStatus, executor, keyframes: int, timeout_s: float,
                  idle_s: float = 15.0) -> None:
    """Spin until the segmentation node integrated ``keyframes``, or both nodes went idle.

    Idle: no bundle waiting and neither the perception node's keyframe count nor the
    segmentation node's integrated count changed for ``idle_s`` (the perception node may
    have skipped a frame, e.g. one whose pose arrived too late).
    """
    deadline = time.monotonic() + timeout_s
    last_counts, last_change = None, time.monotonic()
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.2)
        integrated = status.count('segmentation', 'frames_integrated')
        counts = (integrated, status.count('perception', 'keyframes'))
        if counts != last_counts:
            last_counts, last_change = counts, time.monotonic()
        drained = (status.count('segmentation', 'bundles_ready') == 0
                   and status.count('segmentation', 'bundles_incomplete') == 0)
        if drained and (integrated >= keyframes or time.monotonic() - last_change > idle_s):
            return


def _save_map(node, executor) -> str:
    """Call the segmentation node's save_map service; return the directory it wrote."""
    from std_srvs.srv import Trigger
    client = node.create_client(Trigger, '/save_map')
    if not client.wait_for_service(timeout_sec=15.0):
        raise RuntimeError('save_map service did not appear')
    future = client.call_async(Trigger.Request())
    executor.spin_until_future_complete(future, timeout_sec=120.0)
    response = future.result()
    if response is None or not response.success:
        raise RuntimeError(f'save_map failed: {response.message if response else "timeout"}')
    return response.message


def _play_and_save(bag_dir, params, keyframes, rate, timeout_s) -> str:
    """Run the nodes, play the bag into them, save the map; return the map directory."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from onlineanyseg_ros.ros.player import BagPlayer

    pipeline = _start_pipeline(params)
    rclpy.init()
    node = rclpy.create_node('onlineanyseg_demo')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        status = NodeStatus(node)
        _wait_until_up(status, executor, pipeline)
        player = BagPlayer(node, bag_dir, rate=rate, wait_for_subscribers=4,
                           wait_timeout_s=60.0)
        player.start()
        started = time.monotonic()
        while not player.finished:
            executor.spin_once(timeout_sec=0.1)
            if pipeline.poll() is not None:
                raise RuntimeError(f'the nodes exited with status {pipeline.returncode}')
        print(f'[demo] played {sum(player.published.values())} messages in '
              f'{time.monotonic() - started:.1f} s')
        _wait_for_map(status, executor, keyframes, timeout_s)
        perception, segmentation = status.values['perception'], status.values['segmentation']
        print(f'[demo] perception node: {perception.get("frames.valid")} frames, '
              f'{perception.get("keyframes")} keyframes')
        print(f'[demo] segmentation node: {segmentation.get("frames_integrated")} keyframes, '
              f'{segmentation.get("merge_rounds")} merge rounds, '
              f'{segmentation.get("merged_masks")} merged masks')
        skips = {f'{name}.{key}': value for name, values in status.values.items()
                 for key, value in values.items() if key.startswith('skipped.')}
        if skips or status.count('segmentation', 'frames_integrated') < status.count(
                'perception', 'keyframes'):
            print(f'[demo] warning: not every keyframe reached the map; skips: {skips}')
        map_dir = _save_map(node, executor)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        status = stop_process(pipeline)
    if status != 0:
        raise RuntimeError(f'the nodes did not shut down cleanly (exit status {status})')
    return map_dir


def stop_process(process: subprocess.Popen) -> int:
    """Stop ``process`` with SIGINT (Ctrl-C), kill it after 20 s; return its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _report(scene_dir: pathlib.Path, map_dir: pathlib.Path, out: pathlib.Path) -> dict:
    """Render the instances to PNG, print AP against the ground truth and timings."""
    import numpy as np
    from onlineanyseg_ros.core.export import BACKGROUND_GREY, instance_palette
    from onlineanyseg_ros.eval.ap import average_precision, evaluate_paths
    from onlineanyseg_ros.eval.render import render_views, save_png

    data = np.load(map_dir / 'instances.npz')
    ids = data['instance_ids']
    colors = np.full((ids.size, 3), BACKGROUND_GREY, np.uint8)
    colors[ids > 0] = instance_palette(data['uids'])[ids[ids > 0] - 1]
    png = out / 'instances.png'
    save_png(png, render_views(data['points'], colors,
                               title=f'{int(ids.max(initial=0))} instances'))
    scene = evaluate_paths(map_dir, scene_dir / f'{scene_dir.name}_vh_clean_2.ply',
                           scene_dir / f'{scene_dir.name}.txt', name=scene_dir.name)
    metrics = average_precision([scene])
    print(f'[demo] {int(ids.max(initial=0))} instances -> {png}')
    print(f'[demo] class-agnostic AP {metrics["ap"]:.3f}  AP50 {metrics["ap50"]:.3f}  '
          f'AP25 {metrics["ap25"]:.3f}  ({scene_dir.name}, geometric masks, no weights)')
    timings = json.loads((map_dir / 'summary.json').read_text()).get('timings_ms', {})
    print('[demo] segmentation stage latency (ms): ' + ', '.join(
        f'{stage} p50 {values["p50_ms"]:.0f} / p95 {values["p95_ms"]:.0f}'
        for stage, values in timings.items()))
    return metrics


def replay_demo(out: pathlib.Path, frames: int = 300, seed: int = 0, rate: float = 0.5,
                timeout_s: float = 240.0, size=(480, 640),
                keyframe_every: Optional[int] = None) -> dict:
    """Run the whole demo into ``out``; return the AP metrics of the saved map."""
    out = pathlib.Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scene_dir, bag_dir, frames = _prepare(out, frames, seed, size)
    params, keyframe_every = _params_file(out, keyframe_every)
    keyframes = -(-frames // keyframe_every)
    map_dir = pathlib.Path(_play_and_save(bag_dir, params, keyframes, rate, timeout_s))
    return _report(scene_dir, map_dir, out)


def run(args: argparse.Namespace) -> int:
    """Entry point of `onlineanyseg demo`."""
    started = time.perf_counter()
    replay_demo(pathlib.Path(args.out), args.frames, args.seed, args.rate, args.timeout)
    print(f'[demo] done in {time.perf_counter() - started:.0f} s')
    return 0
