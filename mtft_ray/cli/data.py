"""``mtft-ray data prepare`` and ``mtft-ray data info``: sharded stores for data at scale.

Examples:
    mtft-ray data prepare sweeps/default.yaml --out runs/stores/glyphs-64
    mtft-ray data prepare my-domainnet.yaml --out s3://bucket/stores/domainnet-224 --parallelism 64
    mtft-ray data info s3://bucket/stores/domainnet-224 --json
"""

from __future__ import annotations

import argparse
import json


def _cmd_prepare(ns: argparse.Namespace) -> int:
    from mtft_ray.data.prepare import prepare

    cfg = ns.load_config(ns)
    summary = prepare(cfg.data, ns.out, seed=cfg.seed, parallelism=ns.parallelism,
                      shard_bytes=int(ns.shard_mb * (1 << 20)), endpoint_url=ns.endpoint_url, progress=not ns.no_progress)
    print(json.dumps(summary) if ns.json else
          f"prepared {summary['uri']}: {summary['samples']:,} samples {tuple(summary['shape'])} in "
          f"{summary['shards']} shard(s) ({summary['written']} written, {summary['kept']} kept from an earlier run) "
          f"in {summary['seconds']:.1f} s; fingerprint {summary['fingerprint']}\n"
          f"use it with: data: {{source: store, options: {{uri: {summary['uri']}}}, image_size: {summary['shape'][0]}}}")
    return 0


def _cmd_info(ns: argparse.Namespace) -> int:
    from mtft_ray.data.info import format_info, store_info

    info = store_info(ns.uri, endpoint_url=ns.endpoint_url)
    if ns.json:
        print(json.dumps(info, indent=1))
    else:
        print(format_info({**info}))
    return 0


def register(sub, load_config) -> None:
    """Add ``data prepare`` and ``data info``; ``load_config(ns)`` turns ``[CONFIG] [key=value ...]``
    into an experiment config (the CLI's own loader, passed in so this module needs no import of it)."""
    data = sub.add_parser("data", help="prepare a sharded, memory-mapped store (Ray Data), or describe one")
    dsub = data.add_subparsers(dest="data_command", required=True)
    prep = dsub.add_parser("prepare", help="build a store from an experiment's data source with Ray Data",
                           description="Build the store of CONFIG's data section (its source, options and "
                                       "image_size) at --out, a folder or s3://bucket/prefix: files are read, decoded, "
                                       "resized and centre-cropped in parallel Ray Data tasks, one per shard. Run it "
                                       "again after an interruption and it keeps every finished shard.")
    prep.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]")
    prep.add_argument("--out", required=True, metavar="URI", help="the store's folder or s3://bucket/prefix")
    prep.add_argument("--parallelism", type=int, metavar="N", help="most shard tasks at once (default: every CPU)")
    prep.add_argument("--shard-mb", type=float, default=256, metavar="MB", help="target shard size (default 256)")
    prep.add_argument("--endpoint-url", help="S3 endpoint (default $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)")
    prep.add_argument("--json", action="store_true", help="print the summary as JSON")
    prep.add_argument("--no-progress", action="store_true")
    prep.set_defaults(fn=_cmd_prepare, load_config=load_config)
    info = dsub.add_parser("info", help="counts per domain and class, shape, bytes, fingerprint of a store")
    info.add_argument("uri", metavar="URI", help="a store folder or s3://bucket/prefix")
    info.add_argument("--endpoint-url", help="S3 endpoint (default $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)")
    info.add_argument("--json", action="store_true")
    info.set_defaults(fn=_cmd_info)
