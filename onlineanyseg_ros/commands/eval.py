"""`onlineanyseg eval`: class-agnostic AP/AP50/AP25 of saved instance maps (ScanNet protocol)."""

import argparse
import logging
from pathlib import Path

LOGGER = logging.getLogger(__name__)
DEFAULT_REPORT_NAME = 'eval_ap.json'


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` subcommand."""
    parser = subparsers.add_parser(
        'eval', help='class-agnostic instance AP against ScanNet-format ground truth',
        description='One scene: --pred OUT_DIR --gt-vertices PLY --gt-labels TXT. '
                    'Many scenes: --pred PRED_ROOT --gt-root GT_ROOT, where each scene NAME '
                    'has PRED_ROOT/NAME/instances.npz, GT_ROOT/NAME/NAME_vh_clean_2.ply and '
                    'GT_ROOT/NAME/NAME.txt; all scenes pool into one precision-recall curve.')
    parser.add_argument('--pred', required=True, type=Path, metavar='DIR',
                        help='directory with instances.npz (one scene) or of scene '
                             'directories (with --gt-root)')
    parser.add_argument('--gt-vertices', type=Path, metavar='PLY',
                        help='GT vertex PLY of the one scene')
    parser.add_argument('--gt-labels', type=Path, metavar='TXT',
                        help='GT labels of the one scene, one class*1000+instance per vertex')
    parser.add_argument('--gt-root', type=Path, metavar='DIR',
                        help='GT root for the many-scene form')
    parser.add_argument('--scenes', nargs='+', metavar='NAME',
                        help='evaluate only these scenes (many-scene form; all must exist)')
    parser.add_argument('--json', type=Path, metavar='FILE',
                        help='write the JSON report here (many-scene default: '
                             f'PRED_ROOT/{DEFAULT_REPORT_NAME})')
    parser.add_argument('--match-distance', type=float, default=0.15, metavar='M',
                        help='GT vertex to predicted point distance limit in metres '
                             '(default: %(default)s)')
    parser.add_argument('--icp', action='store_true',
                        help='align GT to the prediction with point-to-point ICP first; off '
                             'by default because our maps are built in the GT pose frame')
    parser.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write the JSON report; return the exit code."""
    from onlineanyseg_ros.eval.ap import ApConfig, evaluate_dirs, evaluate_paths
    from onlineanyseg_ros.eval.report import format_table, summarize, write_report

    single = args.gt_vertices is not None or args.gt_labels is not None
    if single == (args.gt_root is not None):
        LOGGER.error('give either --gt-vertices with --gt-labels (one scene) or --gt-root '
                     '(many scenes)')
        return 2
    if single and (args.gt_vertices is None or args.gt_labels is None or args.scenes):
        LOGGER.error('the one-scene form needs both --gt-vertices and --gt-labels and takes '
                     'no --scenes')
        return 2
    try:
        config = ApConfig(match_distance_m=args.match_distance, icp=args.icp)
        if single:
            scenes = [evaluate_paths(args.pred, args.gt_vertices, args.gt_labels, config)]
        else:
            scenes = evaluate_dirs(args.pred, args.gt_root, config, args.scenes)
    except (ValueError, FileNotFoundError) as error:
        LOGGER.error('%s', error)
        return 1
    summary = summarize(scenes, config)
    print(format_table(summary))
    report_path = args.json
    if report_path is None and not single:
        report_path = args.pred / DEFAULT_REPORT_NAME
    if report_path is not None:
        write_report(report_path, summary)
        LOGGER.info('wrote %s', report_path)
    return 0
