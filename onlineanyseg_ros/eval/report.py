"""Evaluation summaries: per-scene and pooled AP, a printed table and an atomic JSON file."""

import math
from pathlib import Path
from typing import Any, Dict, Sequence

from onlineanyseg_ros.core.config import config_to_dict
from onlineanyseg_ros.data.io import write_json
from onlineanyseg_ros.eval.ap import ApConfig, average_precision, SceneMatches


def summarize(scenes: Sequence[SceneMatches], config: ApConfig = ApConfig()
              ) -> Dict[str, Any]:
    """Return per-scene metrics, the pooled metrics (one PR curve over all scenes) and config.

    Each metrics dict is ``average_precision``'s plus ``num_input_instances`` (predicted
    instances before the mapping and size filters).
    """
    per_scene = {}
    for scene in scenes:
        metrics = average_precision([scene], config)
        metrics['num_input_instances'] = scene.num_input_instances
        per_scene[scene.name] = metrics
    pooled = average_precision(scenes, config)
    pooled['num_input_instances'] = sum(s.num_input_instances for s in scenes)
    return {'protocol': 'class-agnostic ScanNet instance AP', 'config': config_to_dict(config),
            'scenes': per_scene, 'pooled': pooled}


def _cell(value: float) -> str:
    """Format one AP value for the table (NaN, i.e. no GT, prints as n/a)."""
    return '{:>7}'.format('n/a') if math.isnan(value) else f'{value:7.3f}'


def _row(name: str, metrics: Dict[str, Any], name_width: int) -> str:
    """Format one table row."""
    return (f'{name:<{name_width}}  {_cell(metrics["ap"])} {_cell(metrics["ap50"])} '
            f'{_cell(metrics["ap25"])}  {metrics["num_gt"]:>5} {metrics["num_pred"]:>5} '
            f'{metrics["num_input_instances"]:>6}')


def format_table(summary: Dict[str, Any]) -> str:
    """Return the summary as a fixed-width text table, one row per scene plus the pool.

    Columns: AP, AP50, AP25; GT instances counted (>= min region); predictions kept after
    the mapping and size filters; predicted instances in the input.
    """
    scenes = summary['scenes']
    name_width = max([len('pooled')] + [len(name) for name in scenes])
    header = (f'{"scene":<{name_width}}  {"AP":>7} {"AP50":>7} {"AP25":>7}  '
              f'{"GT":>5} {"pred":>5} {"input":>6}')
    rule = '-' * len(header)
    rows = [header, rule] + [_row(name, metrics, name_width) for name, metrics in scenes.items()]
    # With one scene the pooled curve is that scene's; repeating it would only add noise.
    if len(scenes) != 1:
        rows += [rule, _row('pooled', summary['pooled'], name_width)]
    return '\n'.join(rows)


def _json_safe(value: Any) -> Any:
    """Replace NaN (no GT: AP undefined) by None so the file is strict JSON."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_report(path: Path, summary: Dict[str, Any]) -> None:
    """Write ``summary`` as strict JSON (NaN -> null), atomically."""
    write_json(path, _json_safe(summary))
