"""Keyframes per second of the segmentation node over DDS on CPU, and the cost of conversions.

1. Renders a synthetic room (``onlineanyseg synth``) and simulated masks of every
   ``--every``-th frame (``onlineanyseg masks --backend simulated``), cached in ``--workdir``.
2. Starts the segmentation node in its own process (``python -m
   onlineanyseg_ros.ros.segmentation_node``, parameters of ``config/synthetic.yaml``, device
   cpu, one torch thread, DDS on loopback in a random domain, no CLIP text encoder). The
   middleware is as the environment configures it; ``--shm-segment-mb N`` gives both
   processes a Fast DDS profile whose shared-memory segment is N MiB (the default segment,
   512 KiB, is smaller than one 640x480 bundle of 2.8 MB; what does not fit arrives through
   reliable-protocol repairs, seconds later).
3. Publishes the keyframe bundles from this process on the six keyframe topics, built as the
   perception node builds them, as fast as the node drains them (at most ``--window``
   bundles not yet integrated) or at a fixed ``--rate``. The first ``--warmup`` bundles are
   integrated before the clock starts. The node's ``diagnostics`` say when each bundle was
   integrated (``frames_integrated`` at the message stamp) and what it skipped.
4. Stops the node, then times in this process, on the same keyframes and parameters: arrays
   -> messages, CDR serialise and deserialise, ``decode_bundle`` and
   ``OnlineSegmenter.integrate`` per keyframe, and the ``instances/cloud`` and
   ``instances/markers`` messages of the final map per map publish.

    PYTHONPATH=. python benchmarks/bench_node.py --json bench_node.json

Latency resolution: the node publishes diagnostics at ``--diagnostics-hz`` from the same
single-threaded executor that integrates, so a bundle is seen integrated at the next
diagnostics message: within one diagnostics period while the node waits for input (paced
``--rate`` below its capacity), up to one more integration while a backlog is queued (drain
mode, where latency also includes the ``--window`` queueing by design).
"""

import argparse
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.serialization import deserialize_message, serialize_message
import torch
import yaml

from onlineanyseg_ros import cli
from onlineanyseg_ros.commands.demo import package_file, stop_process
from onlineanyseg_ros.core.config import segmenter_config, segmenter_overrides_from_yaml
from onlineanyseg_ros.core.segmenter import OnlineSegmenter
from onlineanyseg_ros.core.types import MaskObservation, RgbdFrame
from onlineanyseg_ros.data.bag import BagLayout
from onlineanyseg_ros.data.scannet import ScanNetSequence
from onlineanyseg_ros.perception.precomputed import read_mask_observation
from onlineanyseg_ros.ros.conversions.header import time_to_ns
from onlineanyseg_ros.ros.frame_queue import JoinedBundle
from onlineanyseg_ros.ros.instance_query import instance_cloud, instance_marker_array
from onlineanyseg_ros.ros.perception_node import keyframe_messages
from onlineanyseg_ros.ros.qos import diagnostics_qos, keyframe_qos
from onlineanyseg_ros.ros.segmentation_node import decode_bundle, KEYFRAME_TOPICS

# DiagnosticStatus.name of the segmentation node.
NODE_STATUS = 'onlineanyseg: segmentation'
# A Fast DDS profile for both processes: the shared-memory transport alone, with a larger
# segment (the default, 512 KiB, is smaller than one keyframe bundle). Both processes share
# the host, and no UDP transport means no traffic off the machine whatever the interfaces.
FASTDDS_PROFILE = """<?xml version="1.0" encoding="UTF-8" ?>
<profiles xmlns="http://www.eprosima.com">
  <transport_descriptors>
    <transport_descriptor>
      <transport_id>shm</transport_id>
      <type>SHM</type>
      <segment_size>{segment_bytes}</segment_size>
    </transport_descriptor>
  </transport_descriptors>
  <participant profile_name="bench_node" is_default_profile="true">
    <rtps>
      <userTransports>
        <transport_id>shm</transport_id>
      </userTransports>
      <useBuiltinTransports>false</useBuiltinTransports>
    </rtps>
  </participant>
</profiles>
"""
# Environment variables that select or configure the middleware, recorded in the JSON.
MIDDLEWARE_VARIABLES = ('RMW_IMPLEMENTATION', 'FASTDDS_BUILTIN_TRANSPORTS',
                        'FASTDDS_DEFAULT_PROFILES_FILE', 'ROS_AUTOMATIC_DISCOVERY_RANGE')
# Skip kinds counted for bundles that were integrated all the same.
INTEGRATED_SKIPS = ('empty_masks', 'time_jump')
Messages = Dict[str, object]


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--workdir', default=os.path.join(tempfile.gettempdir(),
                                                          'onlineanyseg_bench_node'),
                        help='cache of the scene and masks, node log and map (default: '
                             '%(default)s)')
    parser.add_argument('--frames', type=int, default=60, help='frames to render')
    parser.add_argument('--every', type=int, default=2,
                        help='every n-th frame is a keyframe with masks')
    parser.add_argument('--width', type=int, default=640, help='image width, pixels')
    parser.add_argument('--height', type=int, default=480, help='image height, pixels')
    parser.add_argument('--seed', type=int, default=0, help='scene and mask seed')
    parser.add_argument('--params', default=str(package_file('config/synthetic.yaml')),
                        help='parameter file whose segmentation_node section the node and the '
                             'in-process segmenter use (default: %(default)s)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='bundles integrated before the clock starts')
    parser.add_argument('--rate', type=float, default=0.0,
                        help='keyframes per second to publish (0 = as fast as the node drains)')
    parser.add_argument('--window', type=int, default=2,
                        help='bundles published but not yet integrated, in drain mode')
    parser.add_argument('--diagnostics-hz', type=float, default=20.0,
                        help="the node's publish_rate_hz: diagnostics (and latency) resolution")
    parser.add_argument('--shm-segment-mb', type=int, default=0,
                        help='Fast DDS shared-memory segment of both processes, MiB (0 = the '
                             'middleware as configured by the environment)')
    parser.add_argument('--output-repeats', type=int, default=5,
                        help='builds of the cloud and markers of the final map to time')
    parser.add_argument('--timeout', type=float, default=600.0,
                        help='seconds the node may take for start-up and all bundles')
    parser.add_argument('--json', default='bench_node.json', help='output JSON path')
    args = parser.parse_args(argv)
    if (args.every < 1 or args.window < 1 or args.warmup < 0 or args.rate < 0
            or args.shm_segment_mb < 0):
        parser.error('--every and --window must be >= 1, --warmup, --rate and '
                     '--shm-segment-mb >= 0')
    return args


def ros_environment(workdir: pathlib.Path, shm_segment_mb: int) -> None:
    """Set the DDS environment of this process and the node (inherited by the node).

    Discovery stays on loopback in a random domain (set when unset; any other range is
    refused). With ``shm_segment_mb`` > 0 both processes load a Fast DDS profile with a
    shared-memory segment of that size.
    """
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.setdefault('ROS_DOMAIN_ID', str(random.randint(1, 200)))
    if os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] != 'LOCALHOST':
        raise SystemExit('bench_node: ROS_AUTOMATIC_DISCOVERY_RANGE must be LOCALHOST, got '
                         f'{os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"]!r}')
    if shm_segment_mb:
        if os.environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp') != 'rmw_fastrtps_cpp':
            raise SystemExit('bench_node: --shm-segment-mb needs rmw_fastrtps_cpp')
        profile = workdir / f'fastdds_shm_{shm_segment_mb}mb.xml'
        profile.write_text(FASTDDS_PROFILE.format(segment_bytes=shm_segment_mb * 2 ** 20))
        os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(profile.resolve())


def prepare_inputs(args: argparse.Namespace) -> Tuple[pathlib.Path, pathlib.Path]:
    """Render the scene and its simulated masks unless cached; return both directories."""
    workdir = pathlib.Path(args.workdir)
    scene_dir = workdir / f'scene_{args.frames}f_{args.width}x{args.height}_s{args.seed}'
    mask_dir = scene_dir.with_name(f'{scene_dir.name}_masks_every{args.every}')
    if not (scene_dir / 'meta.json').is_file():  # written last by the renderer
        status = cli.main(['synth', str(scene_dir), '--frames', str(args.frames), '--seed',
                           str(args.seed), '--width', str(args.width), '--height',
                           str(args.height)])
        if status:
            raise SystemExit(status)
    if not mask_dir.is_dir():
        # Written beside and renamed, so an interrupted run leaves no half-filled cache.
        partial = mask_dir.with_name(mask_dir.name + '.partial')
        status = cli.main(['masks', str(scene_dir), '--backend', 'simulated', '--every',
                           str(args.every), '--seed', str(args.seed), '--out', str(partial)])
        if status:
            raise SystemExit(status)
        os.replace(partial, mask_dir)
    return scene_dir, mask_dir


def load_keyframes(scene_dir: pathlib.Path, mask_dir: pathlib.Path,
                   every: int) -> List[Tuple[RgbdFrame, MaskObservation]]:
    """Return (frame, masks) of every keyframe, stamped like a bag (``BagLayout`` start)."""
    layout = BagLayout()
    keyframes = []
    sequence = ScanNetSequence(scene_dir, every=every)
    for stem, frame in zip(sequence.stems, sequence):
        masks = read_mask_observation(mask_dir, stem)
        if masks is None:
            raise FileNotFoundError(f'{mask_dir}: no masks for keyframe {stem}')
        frame = RgbdFrame(frame.color, frame.depth, frame.K, frame.T_world_camera,
                          layout.start_time_ns + frame.stamp_ns, frame.frame_index)
        keyframes.append((frame, masks))
    return keyframes


def bundle_of(frame: RgbdFrame, masks: MaskObservation) -> Messages:
    """Return the six keyframe messages of one keyframe, built as the perception node does."""
    features = masks.features if masks.features is not None else np.zeros((0, 0), np.float32)
    layout = BagLayout()
    return keyframe_messages(frame, masks.labels, features, layout.camera_frame,
                             layout.world_frame)


def write_node_params(args: argparse.Namespace) -> Tuple[pathlib.Path, str]:
    """Write the node's parameter file (``--params`` section, cpu); return it and the profile.

    ``publish_rate_hz`` becomes ``--diagnostics-hz``; the map goes under ``--workdir``.
    """
    document = yaml.safe_load(pathlib.Path(args.params).read_text())
    sections = [key for key in document if key.endswith('segmentation_node')]
    if not sections:
        raise SystemExit(f'bench_node: {args.params} has no segmentation_node section')
    parameters = dict(document[sections[0]]['ros__parameters'])
    parameters.update(device='cpu', publish_rate_hz=float(args.diagnostics_hz),
                      output_dir=str(pathlib.Path(args.workdir).resolve() / 'map'))
    path = pathlib.Path(args.workdir) / 'bench_node_params.yaml'
    path.write_text(yaml.safe_dump({'/**/segmentation_node': {'ros__parameters': parameters}}))
    return path, parameters.get('profile', 'default')


def start_node(params: pathlib.Path, workdir: pathlib.Path) -> Tuple[subprocess.Popen, object]:
    """Start the segmentation node process; return it and its open log file."""
    # An empty Hugging Face cache: a cached ViT-H text encoder would be loaded at start-up,
    # which text queries need but mapping does not.
    cache = workdir / 'empty_hf_cache'
    cache.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1',
                       HF_HOME=str(cache), HF_HUB_CACHE=str(cache / 'hub'))
    log = open(workdir / 'node.log', 'w')
    command = [sys.executable, '-m', 'onlineanyseg_ros.ros.segmentation_node', '--ros-args',
               '--params-file', str(params)]
    return subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT), log


class NodeObserver:
    """Publishes keyframe bundles and follows the node's diagnostics.

    ``integrated_at_ns[i]`` is the stamp (system clock, ns) of the first diagnostics message
    that counted ``i + 1`` integrated frames; ``latest`` holds its last key/value pairs.
    """

    def __init__(self, node) -> None:
        self.node = node
        self.publishers = {key: node.create_publisher(msg_type, topic, keyframe_qos())
                           for key, (msg_type, topic) in KEYFRAME_TOPICS.items()}
        self.published = 0
        self.integrated_at_ns: List[int] = []
        self.latest: Dict[str, str] = {}
        self.latest_stamp_ns = 0
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                 diagnostics_qos())

    def _on_diagnostics(self, message: DiagnosticArray) -> None:
        for status in message.status:
            if status.name != NODE_STATUS:
                continue
            self.latest = {pair.key: pair.value for pair in status.values}
            self.latest_stamp_ns = time_to_ns(message.header.stamp)
            while len(self.integrated_at_ns) < int(self.latest['frames_integrated']):
                self.integrated_at_ns.append(self.latest_stamp_ns)

    def ready(self) -> bool:
        """Return whether every keyframe topic is matched and diagnostics arrived."""
        return bool(self.latest) and all(publisher.get_subscription_count() > 0
                                         for publisher in self.publishers.values())

    def skipped(self) -> Dict[str, int]:
        """Return ``{kind: count}`` of the inputs the node skipped or dropped."""
        return {key[len('skipped.'):]: int(value) for key, value in self.latest.items()
                if key.startswith('skipped.')}

    def in_flight(self) -> int:
        """Return the bundles published but neither integrated nor dropped (as last seen)."""
        dropped = sum(count for kind, count in self.skipped().items()
                      if kind not in INTEGRATED_SKIPS)
        return self.published - len(self.integrated_at_ns) - dropped

    def publish(self, messages: Messages) -> Tuple[int, float]:
        """Publish one bundle; return (system time before it in ns, publish call in ms)."""
        published_ns, started = time.time_ns(), time.perf_counter()
        for key, message in messages.items():
            self.publishers[key].publish(message)
        self.published += 1
        return published_ns, (time.perf_counter() - started) * 1e3


def stream(observer: NodeObserver, executor, bundles: Sequence[Messages], rate_hz: float,
           window: int, deadline: float, process: subprocess.Popen) -> Dict[str, list]:
    """Publish ``bundles`` (paced at ``rate_hz``, or ``window`` in flight) until handled.

    Returns once the node's diagnostics account for every bundle, integrated or dropped;
    ``published_ns`` and ``publish_ms`` per bundle.
    """
    expected = observer.published + len(bundles)
    published_ns: List[int] = []
    publish_ms: List[float] = []
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f'the node exited with status {process.returncode}')
        if time.monotonic() > deadline:
            raise TimeoutError(f'{len(observer.integrated_at_ns)} of {expected} bundles '
                               'integrated before --timeout')
        index = len(published_ns)
        if index < len(bundles):
            due = (time.monotonic() >= started + index / rate_hz if rate_hz > 0
                   else observer.in_flight() < window)
            if due:
                stamp_ns, call_ms = observer.publish(bundles[index])
                published_ns.append(stamp_ns)
                publish_ms.append(call_ms)
                continue
        elif observer.in_flight() <= 0:
            return {'published_ns': published_ns, 'publish_ms': publish_ms}
        executor.spin_once(timeout_sec=0.005)


def percentiles(samples_ms: Sequence[float]) -> Dict[str, float]:
    """Return ``{'p50_ms', 'p95_ms', 'total_ms', 'count'}`` of millisecond samples.

    Percentiles are NaN when there is no sample.
    """
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        return {'p50_ms': float('nan'), 'p95_ms': float('nan'), 'total_ms': 0.0, 'count': 0}
    return {'p50_ms': float(np.percentile(values, 50)),
            'p95_ms': float(np.percentile(values, 95)), 'total_ms': float(values.sum()),
            'count': int(values.size)}


def run_node(args: argparse.Namespace, bundles: Sequence[Messages],
             params: pathlib.Path) -> dict:
    """Stream the bundles through the node process over DDS; return the end-to-end report."""
    process, log = start_node(params, pathlib.Path(args.workdir))
    rclpy.init()
    node = rclpy.create_node('bench_node_feeder')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    deadline = time.monotonic() + args.timeout
    try:
        observer = NodeObserver(node)
        while not observer.ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'the node did not come up; see {log.name}')
            executor.spin_once(timeout_sec=0.05)
        stream(observer, executor, bundles[:args.warmup], 0.0, 1, deadline, process)
        timed = stream(observer, executor, bundles[args.warmup:], args.rate, args.window,
                       deadline, process)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        exit_status = stop_process(process)
        log.close()
    integrated_at_ns = observer.integrated_at_ns[args.warmup:]
    skipped = observer.skipped()
    # The k-th integration is the k-th bundle only when none was dropped.
    dropped = any(kind not in INTEGRATED_SKIPS for kind in skipped)
    latencies_ms = [] if dropped else [(done - sent) * 1e-6 for sent, done in
                                       zip(timed['published_ns'], integrated_at_ns)]
    first_ns = timed['published_ns'][0]
    elapsed_s = (integrated_at_ns[-1] - first_ns) * 1e-9 if integrated_at_ns else float('nan')
    return {
        'keyframes_published': len(timed['published_ns']),
        'keyframes_integrated': len(integrated_at_ns), 'elapsed_s': elapsed_s,
        'keyframes_per_s': len(integrated_at_ns) / elapsed_s if integrated_at_ns else 0.0,
        'latency_ms': percentiles(latencies_ms), 'publish_call_ms': percentiles(
            timed['publish_ms']), 'skipped': skipped, 'diagnostics': observer.latest,
        'node_exit_status': exit_status,
        # Per timed bundle, seconds since the first timed publish.
        'published_s': [(stamp - first_ns) * 1e-9 for stamp in timed['published_ns']],
        'integrated_s': [(stamp - first_ns) * 1e-9 for stamp in integrated_at_ns]}


def time_in_process(keyframes: Sequence[Tuple[RgbdFrame, MaskObservation]], profile: str,
                    overrides: dict, warmup: int, output_repeats: int) -> dict:
    """Time conversions and integration per keyframe and map outputs on the final map."""
    segmenter = OnlineSegmenter(segmenter_config(profile, overrides), 'cpu')
    message_types = {key: msg_type for key, (msg_type, _) in KEYFRAME_TOPICS.items()}
    stages = {name: [] for name in ('encode', 'serialize', 'deserialize', 'decode',
                                    'integrate')}
    wire_bytes = []
    for index, (frame, masks) in enumerate(keyframes):
        ticks = [time.perf_counter()]
        messages = bundle_of(frame, masks)
        ticks.append(time.perf_counter())
        wire = {key: serialize_message(message) for key, message in messages.items()}
        ticks.append(time.perf_counter())
        received = {key: deserialize_message(data, message_types[key])
                    for key, data in wire.items()}
        ticks.append(time.perf_counter())
        decoded = decode_bundle(JoinedBundle(frame.stamp_ns, received))
        ticks.append(time.perf_counter())
        segmenter.integrate(decoded.frame, decoded.masks)
        ticks.append(time.perf_counter())
        if index >= warmup:
            for name, start, end in zip(stages, ticks, ticks[1:]):
                stages[name].append((end - start) * 1e3)
            wire_bytes.append(sum(len(data) for data in wire.values()))
    report = {name: percentiles(samples) for name, samples in stages.items()}
    report['segmenter_stages'] = segmenter.timer.summary()
    exported = segmenter.labeled_points()
    world, stamp_ns = BagLayout().world_frame, keyframes[-1][0].stamp_ns
    outputs = {'cloud': lambda: instance_cloud(exported, stamp_ns, world),
               'markers': lambda: instance_marker_array(exported, stamp_ns, world)}
    for name, build in outputs.items():
        samples = []
        for _ in range(output_repeats):
            started = time.perf_counter()
            build()
            samples.append((time.perf_counter() - started) * 1e3)
        report[name] = percentiles(samples)
    report.update(wire_bytes_per_keyframe=float(np.median(wire_bytes)),
                  map_points=int(exported.points.shape[0]), instances=exported.num_instances)
    return report


def ratios(end_to_end: dict, in_process: dict) -> Dict[str, float]:
    """Return the conversion shares (p50 over p50 integration) and the DDS efficiency.

    The in-process ceiling is the keyframe rate of decode + integrate alone (their total
    time over the timed keyframes); the end-to-end rate over it is what the transport,
    the node's executor and the publisher leave of it.
    """
    p50 = {name: in_process[name]['p50_ms'] for name in ('encode', 'serialize', 'deserialize',
                                                         'decode', 'integrate', 'cloud',
                                                         'markers')}
    input_path = p50['encode'] + p50['serialize'] + p50['deserialize'] + p50['decode']
    node_work_ms = in_process['decode']['total_ms'] + in_process['integrate']['total_ms']
    ceiling = in_process['integrate']['count'] / (node_work_ms * 1e-3)
    return {'decode_over_integrate': p50['decode'] / p50['integrate'],
            'input_conversions_over_integrate': input_path / p50['integrate'],
            'map_outputs_over_integrate': (p50['cloud'] + p50['markers']) / p50['integrate'],
            'in_process_keyframes_per_s': ceiling,
            'end_to_end_over_in_process': end_to_end['keyframes_per_s'] / ceiling}


def print_table(report: dict) -> None:
    """Print the measures as a Markdown table (times p50 / p95)."""
    node, local, share = report['end_to_end'], report['in_process'], report['ratios']
    stages = node['diagnostics']

    def ms(summary: dict) -> str:
        return f'{summary["p50_ms"]:.1f} / {summary["p95_ms"]:.1f} ms'

    skipped = ', '.join(f'{kind} {count}' for kind, count in node['skipped'].items())
    rows = [
        ('keyframes timed / integrated', f'{node["keyframes_published"]} / '
         f'{node["keyframes_integrated"]}'),
        ('end to end, first publish to last integrated', f'**{node["keyframes_per_s"]:.2f} '
         f'keyframes/s** ({node["elapsed_s"]:.1f} s)'),
        ('latency publish -> integrated', ms(node['latency_ms'])),
        ('publish call, 6 parts', ms(node['publish_call_ms'])),
        ('node skips and drops (diagnostics)', skipped or '0'),
        ('node decode_bundle (diagnostics)', f'{float(stages.get("decode.p50_ms", "nan")):.1f}'
         f' / {float(stages.get("decode.p95_ms", "nan")):.1f} ms'),
        ('wire size per keyframe', f'{local["wire_bytes_per_keyframe"] / 1e6:.2f} MB'),
        ('in process: arrays -> 6 messages', ms(local['encode'])),
        ('in process: CDR serialise / deserialise', f'{local["serialize"]["p50_ms"]:.1f} / '
         f'{local["deserialize"]["p50_ms"]:.1f} ms (p50)'),
        ('in process: decode_bundle', ms(local['decode'])),
        ('in process: OnlineSegmenter.integrate', ms(local['integrate'])),
        (f'in process: instances/cloud of the final map ({local["map_points"]} points)',
         ms(local['cloud'])),
        (f'in process: instances/markers of the final map ({local["instances"]} instances)',
         ms(local['markers'])),
        ('decode / integrate (p50)', f'{share["decode_over_integrate"]:.4f}'),
        ('arrays -> messages -> CDR -> arrays / integrate (p50)',
         f'{share["input_conversions_over_integrate"]:.4f}'),
        ('cloud + markers / integrate (p50)', f'{share["map_outputs_over_integrate"]:.3f}'),
        ('in-process ceiling, decode + integrate',
         f'{share["in_process_keyframes_per_s"]:.2f} keyframes/s'),
        ('end to end / in-process ceiling', f'{share["end_to_end_over_in_process"]:.2f}'),
    ]
    print('| measure | value |\n|---|---|')
    for name, value in rows:
        print(f'| {name} | {value} |')


def write_json(report: dict, path: str) -> None:
    """Write ``report`` to ``path`` atomically (a temporary file, then a rename)."""
    temporary = path + '.tmp'
    with open(temporary, 'w') as handle:
        json.dump(report, handle, indent=2)
    os.replace(temporary, path)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    pathlib.Path(args.workdir).mkdir(parents=True, exist_ok=True)
    ros_environment(pathlib.Path(args.workdir), args.shm_segment_mb)
    # The node runs one torch thread; the in-process reference must too.
    torch.set_num_threads(1)
    scene_dir, mask_dir = prepare_inputs(args)
    keyframes = load_keyframes(scene_dir, mask_dir, args.every)
    if len(keyframes) <= args.warmup:
        raise SystemExit(f'bench_node: {len(keyframes)} keyframes, need more than --warmup')
    params, profile = write_node_params(args)
    bundles = [bundle_of(frame, masks) for frame, masks in keyframes]
    end_to_end = run_node(args, bundles, params)
    del bundles
    in_process = time_in_process(keyframes, profile, segmenter_overrides_from_yaml(str(params)),
                                 args.warmup, args.output_repeats)
    report = {'config': vars(args), 'keyframes': len(keyframes),
              'ros_domain_id': int(os.environ['ROS_DOMAIN_ID']),
              'middleware': {name: os.environ.get(name, '') for name in MIDDLEWARE_VARIABLES},
              'cpus': os.cpu_count(),
              'load_average': os.getloadavg()[0], 'end_to_end': end_to_end,
              'in_process': in_process, 'ratios': ratios(end_to_end, in_process)}
    print_table(report)
    write_json(report, args.json)
    return 0 if end_to_end['node_exit_status'] == 0 and not end_to_end['skipped'] else 1


if __name__ == '__main__':
    raise SystemExit(main())
