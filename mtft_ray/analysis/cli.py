"""``mtft-ray analyze PATH [--out DIR] [--endpoint-url URL]``: tables, plots, report, recommendation.

Example:
    mtft-ray analyze runs/sweeps/quickstart                     # writes runs/sweeps/quickstart/analysis/
    mtft-ray analyze s3://my-bucket/sweeps/quickstart --out runs/analysis/qs
"""

from __future__ import annotations

import argparse
import sys


def _cmd_analyze(ns: argparse.Namespace) -> int:
    from mtft_ray.analysis.analyze import analyze, summary  # late: pandas and matplotlib, not needed for --help

    result = analyze(ns.path, ns.out, ns.endpoint_url, ns.screen)
    print(summary(result))
    if result.data.finished().empty:
        print("mtft-ray: no trial has finished: the report lists the trials and why", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    """Add ``analyze`` to the ``mtft-ray`` parser's subparsers."""
    p = sub.add_parser("analyze", help="tables, plots, a report and a recommendation from a sweep (local or s3://)",
                       description="Analyse a sweep folder (what 'mtft-ray sweep --out' wrote), finished or still "
                                   "running, local or s3://bucket/prefix: one row per trial (DIR/trials.csv, "
                                   "trials.parquet), plots (PNG), DIR/report.md + report.html, and the next "
                                   "configuration to try. Exit status 1 when no trial has finished yet.")
    p.add_argument("path", metavar="PATH", help="the sweep folder: a local path or s3://bucket/prefix")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default PATH/analysis; runs/analysis/<name> for s3://)")
    p.add_argument("--endpoint-url", metavar="URL",
                   help="S3 endpoint (default $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL); credentials come from "
                        "the AWS default chain")
    p.add_argument("--screen", metavar="FILE",
                   help="a screen.json (mtft-ray screen) whose proxies are checked against the finetuned results "
                        "(default PATH/screen.json, or the screen the sweep's space came from)")
    p.set_defaults(fn=_cmd_analyze)
