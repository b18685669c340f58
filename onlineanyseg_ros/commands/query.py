"""`onlineanyseg query`: rank the instances of a saved map by CLIP similarity with a text."""

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `query` subcommand."""
    parser = subparsers.add_parser(
        'query', help='rank the instances of a saved map by similarity with a text',
        description='Encode TEXT with the CLIP text encoder and list the MAP_DIR instances '
                    '(instances.npz of `onlineanyseg run` or save_map) with the most similar '
                    'features. Needs local CLIP weights and a map built with mask features.')
    parser.add_argument('map_dir', metavar='MAP_DIR', help='folder with instances.npz')
    parser.add_argument('text', help='query text, e.g. "a chair"')
    parser.add_argument('--top-k', type=int, default=5, help='instances to list')
    parser.add_argument('--clip-checkpoint', default='',
                        help='open_clip checkpoint file (default: the Hugging Face cache)')
    parser.add_argument('--device', default='auto', help='torch device of the text encoder')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, load_embedder=None) -> int:
    """Entry point; ``load_embedder(config)`` may be injected (tests)."""
    from onlineanyseg_ros.core.export import ExportedMap
    from onlineanyseg_ros.core.query import query_instances, QueryUnavailable
    from onlineanyseg_ros.perception.clip_embedder import ClipEmbedderConfig, load_clip_embedder

    exported = ExportedMap.load(args.map_dir)
    embedder = (load_embedder or load_clip_embedder)(ClipEmbedderConfig(
        checkpoint_path=args.clip_checkpoint, device=args.device))
    if embedder is None:
        print('onlineanyseg query: no CLIP weights, so no text query is possible',
              file=sys.stderr)
        return 1
    try:
        result = query_instances(exported, args.text, embedder.embed_text, args.top_k)
    except QueryUnavailable as error:
        print(f'onlineanyseg query: {error}', file=sys.stderr)
        return 1
    table = {row['id']: row for row in exported.instance_table()}
    print(f'{"id":>4} {"uid":>6} {"cosine":>7} {"points":>7}  center (m)')
    for instance_id, cosine in zip(result.instance_ids, result.similarities):
        row = table[int(instance_id)]
        center = ' '.join(f'{value:.2f}' for value in row['center'])
        print(f'{row["id"]:4d} {row["uid"]:6d} {cosine:7.3f} {row["points"]:7d}  {center}')
    return 0
