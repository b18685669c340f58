"""`onlineanyseg play`: replay a rosbag2 bag through rclpy (no `ros2 bag play` needed)."""

import argparse
import logging
from pathlib import Path

LOGGER = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `play` subcommand."""
    parser = subparsers.add_parser(
        'play', help='replay a rosbag2 bag (mcap or sqlite3) with rclpy',
        description='Publishes the recorded bytes at the recorded timing / --rate, with each '
                    "topic's recorded QoS (/tf_static stays latched). Topics whose message "
                    'type this rclpy cannot import are skipped with a warning. On machines '
                    'without ROS networking set ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST.')
    parser.add_argument('bag', type=Path, metavar='BAG', help='bag directory or file')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='playback speed factor (default: %(default)s)')
    parser.add_argument('--loop', action='store_true', help='replay forever')
    parser.add_argument('--clock', action='store_true',
                        help='publish /clock (bag time) for nodes with use_sim_time')
    parser.add_argument('--topics', nargs='+', metavar='TOPIC', help='play only these topics')
    parser.add_argument('--wait-for-subscribers', type=int, default=0, metavar='N',
                        help='hold playback until the played topics (and /clock) have N '
                             'matched subscriptions in total (default: %(default)s)')
    parser.add_argument('--wait-timeout', type=float, default=30.0, metavar='S',
                        help='give up waiting for subscribers after S seconds and play '
                             '(default: %(default)s)')
    parser.set_defaults(func=run_play)


def run_play(args: argparse.Namespace) -> int:
    """Play the bag until done (or Ctrl-C); print what was published; return the exit code."""
    import rclpy
    from rosbags.rosbag2 import ReaderError

    from onlineanyseg_ros.ros.player import BagPlayer

    if not args.bag.exists():
        LOGGER.error('bag %s does not exist', args.bag)
        return 1
    rclpy.init()
    node = rclpy.create_node('onlineanyseg_player')
    player = None
    try:
        player = BagPlayer(node, args.bag, rate=args.rate, loop=args.loop, clock=args.clock,
                           topics=args.topics, wait_for_subscribers=args.wait_for_subscribers,
                           wait_timeout_s=args.wait_timeout)
        player.play()
    except (ValueError, RuntimeError, ReaderError) as error:
        LOGGER.error('%s', error)
        return 1
    except KeyboardInterrupt:
        LOGGER.info('interrupted')
    finally:
        if player is not None:
            player.close()
            for topic, count in player.published.items():
                print(f'  {topic}: {count}')
            print(f'published {sum(player.published.values())} messages '
                  f'({player.loops} complete passes, {len(player.skipped_topics)} topics '
                  'skipped)')
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
