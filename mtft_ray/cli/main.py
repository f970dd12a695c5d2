"""The ``mtft-ray`` command line.

Examples:
    mtft-ray run                                   # the built-in default experiment
    mtft-ray run sweeps/tiny.yaml tasks.M=200 --out runs/m200
    mtft-ray evaluate --checkpoint runs/m200/multitask.pt --out runs/m200-eval
    mtft-ray sweep sweeps/quickstart.yaml          # Ray Tune + Optuna over task subsets and sizes
    mtft-ray analyze runs/sweeps/quickstart        # tables, plots, report, next configuration
    mtft-ray cluster check cluster/aws.yaml --sweep sweeps/paper-mxm.yaml
    mtft-ray submit --follow -- sweep sweeps/paper-mxm.yaml --out s3://bucket/sweeps/paper-mxm
    mtft-ray bench episodes
    mtft-ray data prepare sweeps/default.yaml --out runs/stores/glyphs-64   # a sharded store (Ray Data)

Each subcommand imports its layer when it runs (the only function-level imports of the package's
own modules): ``mtft-ray --help`` and ``analyze`` then start without loading torch or Ray.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mtft_ray.config import load_config
from mtft_ray.errors import MtftError
from mtft_ray.io import atomic_write_json


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value ...]`` → (config path or None, overrides)."""
    config, overrides = None, []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif config is None:
            config = a
        else:
            raise MtftError(f"unexpected argument {a!r}: give one CONFIG file, then key=value overrides")
    return config, overrides


def _out_dir(path: str | Path) -> Path:
    """An output folder: it, or the first of its parents that exists, must be a folder.

    Raises:
        MtftError: ``--out`` names a file (or a folder inside one).
    """
    out = Path(path)
    there = next((p for p in (out, *out.parents) if p.exists()), None)
    if there is not None and not there.is_dir():
        raise MtftError(f"--out {out}: {there} is a file, not a folder")
    return out


def _load(ns: argparse.Namespace, extra_overrides: list[str] = ()):
    """The experiment config named by ``[CONFIG] [key=value ...]``, plus flag-derived overrides."""
    path, overrides = _split_args(ns.args)
    no_progress = ["run.progress=false"] if getattr(ns, "no_progress", False) else []
    return load_config(path, overrides + list(extra_overrides) + no_progress)


def format_table(results: list[dict]) -> str:
    """Accuracy rows as an aligned text table (one line per method and shot)."""
    lines = [f"{'method':<10} {'setting':<16} {'accuracy':>9} {'95% CI':>8} {'episodes':>9}"]
    for r in results:
        setting = f"{r['n_way']}-way {r['n_shot']}-shot"
        lines.append(f"{r['method']:<10} {setting:<16} {100 * r['acc']:>8.2f}% {100 * r['ci95']:>7.2f} "
                     f"{r['episodes']:>9}")
    return "\n".join(lines)


def _cmd_run(ns: argparse.Namespace) -> int:
    extra = [f"train.workers={ns.workers}"] if ns.workers is not None else []
    cfg = _load(ns, extra + (["train.use_gpu=true"] if ns.gpu else []))
    out = _out_dir(ns.out or f"runs/{cfg.name}")
    if ns.dry_run:
        return _dry_run(cfg, out)
    from mtft_ray.experiment import run_experiment
    from mtft_ray.train.distributed import open_run_storage

    storage = None
    if cfg.storage.path or cfg.train.workers:
        storage = open_run_storage(cfg, out)  # probed once, here, before anything trains

    result = run_experiment(cfg, out, storage=storage)
    print(f"\n{cfg.name}: M={result['M']} tasks x m={result['m']} samples "
          f"(M*m={result['M'] * result['m']}), config {result['config_hash']}")
    print(format_table(result["results"]))
    print(f"protocol: {', '.join(f'{k}={v}' for k, v in result['protocol'].items())}")
    for method, t in result.get("training", {}).items():
        if t.get("stopped_early"):
            print(f"{method}: {t['stopped_early']}")
    for warning in result["warnings"]:
        print(f"WARNING: {warning}")
    print(f"\nwrote {out / 'result.json'} in {result['seconds']['total']:.0f}s")
    if cfg.storage.path:
        written = storage.upload_dir(out, exclude=("train",))
        print(f"copied {len(written)} result files to {storage.uri()}")
    return 0


def _dry_run(cfg, out: Path) -> int:
    """Print resources, batch arithmetic and storage of a run; train nothing."""
    from mtft_ray.train.distributed import RAY_RUN_NAME, run_storage
    from mtft_ray.train.plan import batch_plan, format_plan

    plan = batch_plan(cfg)
    print(format_plan(plan))
    if cfg.selection.strategy != "all" and cfg.selection.level == "task":
        print(f"note:      task-level selection picks the tasks; M={plan.M} is the configured upper bound")
    if cfg.train.workers:
        where = run_storage(cfg, out)
        print(f"storage:   checkpoints in {where.uri(RAY_RUN_NAME)}"
              + (f" (endpoint {where.endpoint})" if where.endpoint else ""))
    print(f"output:    {out}/result.json (dry run: nothing trained)")
    return 0


def _cmd_evaluate(ns: argparse.Namespace) -> int:
    import torch

    from mtft_ray.experiment import Experiment

    cfg = _load(ns)
    out = _out_dir(ns.out or f"runs/{cfg.name}-eval")  # before the evaluation, not after
    exp = Experiment(cfg)
    model = exp.backbone()
    method = "direct"
    if ns.checkpoint:
        from mtft_ray.models.adapters import is_adapter_state, load_finetuned

        ckpt = Path(ns.checkpoint)
        if not ckpt.is_file():
            raise MtftError(f"checkpoint not found: {ckpt}")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if is_adapter_state(state):  # LoRA adapters only: onto the base model with the config's finetune.peft
            if cfg.finetune.peft is None:
                raise MtftError(f"checkpoint {ckpt} holds LoRA adapters only: evaluate it with the run's config "
                                f"(its finetune.peft), e.g. --config runs/<name>/config.yaml")
            model = exp.backbone(adapters=True)
        try:
            load_finetuned(model, state)
        except RuntimeError as e:
            raise MtftError(f"checkpoint {ckpt} does not fit backbone {cfg.backbone.name}: {str(e)[:200]}") from None
        method = ckpt.stem
    rows = [{"method": method, **r} for r in exp.target.evaluate(model, use_cache=not ns.checkpoint)]
    atomic_write_json(out / "evaluation.json", {"checkpoint": ns.checkpoint, "results": rows, **exp.describe()})
    print(format_table(rows))
    print(f"\nwrote {out / 'evaluation.json'}")
    return 0


def _cmd_select(ns: argparse.Namespace) -> int:
    from mtft_ray.ablation import format_ablation, run_ablation, run_selection

    cfg = _load(ns)
    out = _out_dir(ns.out or f"runs/{cfg.name}-{'ablation' if ns.ablation else 'selection'}")
    if ns.ablation:
        doc = run_ablation(cfg, out)
        print(format_ablation(doc))
        print(f"\nwrote {out / 'ablation.json'} in {doc['seconds']:.0f}s")
        return 0
    doc = run_selection(cfg, out)
    print(f"{doc['strategy']} ({doc['level']} level, {doc['measure'] or 'fixed k'}) for {doc['target']}: "
          f"k={doc['k']} -> {doc['selected_names']}")
    print(f"diversity {doc['diversity']:.3f}  coverage {doc['coverage']:.3f}  "
          f"mean consistency {doc['mean_consistency']:.3f}  ({doc['M']} finetuning tasks)")
    print(f"wrote {out / 'selection.json'} and {out / 'selection.png'}")
    return 0


def _cmd_bench(ns: argparse.Namespace) -> int:
    if ns.what == "episodes":
        from mtft_ray.evaluation.bench import bench_episodes

        result = bench_episodes()
    elif ns.what == "selection":
        from mtft_ray.selection.bench import bench_selection

        result = bench_selection()
    else:
        from mtft_ray.train.bench import bench_train

        result = bench_train(_load(ns), ns.steps, ns.warmup, save=ns.save)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_sweep(ns: argparse.Namespace) -> int:
    """Ray Tune + Optuna over an experiment's keys; ``--dry-run`` prints the space and cost only."""
    from mtft_ray.sweep.load import load_sweep
    from mtft_ray.sweep.tuner import format_trials, run_sweep, sweep_storage

    path, overrides = _split_args(ns.args)
    if path is None:
        raise MtftError("give a sweep YAML (e.g. sweeps/quickstart.yaml)")
    sweep, base = load_sweep(path, overrides)
    where = sweep_storage(sweep, ns.out)
    keys = list(sweep.search.space)
    if ns.dry_run:
        return _sweep_dry_run(ns, path, sweep, base, where)
    rows = run_sweep(sweep, base, ns.out, resume=ns.resume, add=ns.add)
    print(format_trials(rows, keys, sweep.search.primary, sweep.search.metrics[1:]))
    spent = {m: sum(r[m] for r in rows if isinstance(r.get(m), (int, float))) for m in ("gpu_hours", "cpu_hours", "dollars")}
    print("spend:  " + ", ".join(f"{v:.4g} {k.replace('_', '-')}" for k, v in spent.items() if v or k != "dollars")
          + (f" (budget {sweep.search.budget.caps()})" if sweep.search.budget else ""))
    failed = sum(r["status"] == "ERROR" for r in rows)
    incomplete = sum(r["status"] == "INCOMPLETE" for r in rows)
    stopped = sum(r["status"] == "STOPPED" for r in rows)
    print(f"\n{len(rows)} trials ({failed} failed, {stopped} stopped early, {incomplete} incomplete); "
          f"wrote {where.uri('trials.csv')}\nnext: mtft-ray analyze {where.uri()}")
    if incomplete:
        print("interrupted: rerun the same command to resume the sweep", file=sys.stderr)
        return 130
    return 1 if rows and failed == len(rows) else 0


def _cmd_screen(ns: argparse.Namespace) -> int:
    """Rank a sweep's task subsets from pretrained features, without finetuning."""
    from mtft_ray.sweep.screen import format_screen, screen_sweep

    path, overrides = _split_args(ns.args)
    if path is None:
        raise MtftError("give a sweep YAML whose search.space has a subset (e.g. sweeps/subsets-glyphs.yaml)")
    if ns.top < 1 or ns.max_subsets < 1:
        raise MtftError(f"--top and --max-subsets must be >= 1, got {ns.top} and {ns.max_subsets}")
    out = _out_dir(ns.out or f"runs/screens/{Path(path).stem}")
    doc = screen_sweep(path, overrides=overrides, out=out, max_subsets=ns.max_subsets, episodes=ns.episodes,
                       seed=ns.seed, by=ns.by)
    scored = (f"a seeded sample of {doc['subsets_scored']} of the {doc['subsets_total']} subsets (--max-subsets)"
              if doc["sampled"] else f"all {doc['subsets_scored']} subsets")
    print(f"screen of {doc['key']} for target {doc['target']} ({doc['backbone']} pretrained features): {scored}, "
          f"ranked by {doc['rank_by']}" + (f" (mean rank of {', '.join(doc['combined'])})"
                                           if doc["rank_by"] == "combined" else ""))
    print(format_screen(doc, ns.top))
    if len(doc["rows"]) > ns.top:
        print(f"... {len(doc['rows']) - ns.top} more in {out / 'screen.csv'}")
    print(f"\nwrote {out / 'screen.json'} and {out / 'screen.csv'} in {doc['seconds']['total']:.1f}s "
          f"(scoring {doc['seconds']['scoring']:.1f}s)")
    print(f"search the best: {doc['key']}: {{screen: {out / 'screen.json'}, top: {min(ns.top, 5)}}}  "
          f"(a path relative to the sweep file)")
    return 0


def _sweep_dry_run(ns: argparse.Namespace, path: str, sweep, base, where) -> int:
    """The space, trial count, concurrency and cost of a sweep, on this machine or on ``--cluster``."""
    from mtft_ray.sweep.cost import check_budget, estimate_trial
    from mtft_ray.sweep.space import check_data, estimate_minutes, trial_count
    from mtft_ray.sweep.tuner import local_node, local_resources
    from mtft_ray.sweep.tuner import trial_plan as plan_trials
    from mtft_ray.train.calibration import machine_kind

    n = trial_count(sweep)
    price = ns.price_per_hour or sweep.search.price_per_hour
    if ns.cluster:
        from mtft_ray.cluster.check import check_cluster

        report = check_cluster(ns.cluster, path, ns.args[1:])
        cluster, per_trial, concurrency = report.sweep["cluster"], report.sweep["per_trial"], report.sweep["concurrency"]
        node_type = _trial_node_type(report, per_trial)
        kind = _node_kind(node_type)
        price = ns.price_per_hour or node_type.price_per_hour or sweep.search.price_per_hour
        node = node_type.resources
        on = f"{ns.cluster} at full scale, trials on {node_type.name} ({node_type.instance_type or 'local'}, {kind})"
    else:
        cluster = {"CPU": float(os.cpu_count() or 1), **local_resources(base)}
        plan = plan_trials(sweep, base, cluster)
        per_trial, concurrency, kind = plan.per_trial, plan.concurrency, machine_kind()
        node = sweep.search.node or local_node()
        on = f"this machine ({kind})"
    one, sources = estimate_trial(sweep, base, per_trial, kind, price, node)
    print(f"sweep:       {sweep.name} ({sweep.search.algorithm}, "
          f"{' / '.join(f'{m} {k}' for k, m in zip(sweep.search.metrics, sweep.search.modes))})")
    for k, d in sweep.search.space.items():
        print(f"  {k}: {d.describe()}")
    print(f"trials:      {n}, {concurrency} at a time on {cluster} (each holds {per_trial})")
    print(f"cost:        ~{one['seconds'] / 60:.1f} min per trial on {on} with the data cached -> ~"
          f"{estimate_minutes(sweep, base, concurrency, one['rate_img_s'], one['overhead_s']):.1f} min wall for the sweep")
    spend_line = f"{one['gpu_hours'] * n:.3g} GPU-h, {one['cpu_hours'] * n:.3g} CPU-h"
    if "dollars" in one:
        spend_line += f", ${one['dollars'] * n:.4g} at ${price:g}/node-h (${one['dollars']:.4g} per trial)"
    else:
        spend_line += " (no price: --price-per-hour, search.price_per_hour or the node type's label " \
                      "mtft-ray.io/price-per-hour gives dollars)"
    print(f"spend:       {spend_line}")
    for line in sources:
        print(f"             {line}")
    if sweep.search.budget is not None:
        caps = sweep.search.budget.caps()
        if "dollars" in caps and "dollars" not in one:
            raise MtftError(f"{path}: search.budget.dollars needs a price: --price-per-hour, search.price_per_hour "
                            f"or the node type's label mtft-ray.io/price-per-hour")
        check_budget(caps, one, path)
        fit = min(int(cap // one[k]) if one[k] > 0 else n for k, cap in caps.items())
        print(f"budget:      {', '.join(f'{k} {v:g}' for k, v in caps.items())}: ~{min(fit + 1, n)} of {n} trials "
              f"start before it stops the sweep")
    check_data(sweep, base, path)
    print("data:        every episode shape of the space fits the data")
    from mtft_ray.data.info import memory_line
    from mtft_ray.data.load import load_store

    processes = concurrency * (1 + (base.train.workers or 0))
    print(f"memory:      {memory_line(load_store(base.data, seed=base.seed), processes)}")
    print(f"output:      {where.uri('trials.csv')} (dry run: nothing trained)")
    return 0


def _trial_node_type(report, per_trial: dict[str, float]):
    """The worker node type a trial's GPUs (or CPUs) come from: the first that holds them."""
    want = "GPU" if per_trial.get("GPU") else "CPU"
    types = [t for t in report.node_types if (t.max_workers or t.head) and (t.resources or {}).get(want, 0) > 0]
    if not types:
        raise MtftError(f"{report.path}: no node type offers {want} for the trials' {per_trial}")
    return types[0]


def _node_kind(node_type) -> str:
    """The calibration machine kind of a node type: ``gpu-a10g-x1`` or ``cpu-4c``."""
    import re

    res = node_type.resources or {}
    if res.get("GPU"):
        name = re.sub(r"[^a-z0-9]+", "-", re.sub(r"^nvidia[\s_-]*", "", (node_type.gpu_model or "unknown").lower()))
        return f"gpu-{name.strip('-')}-x{int(res['GPU'])}"
    return f"cpu-{int(res.get('CPU', 1))}c"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtft-ray", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="multitask finetuning + few-shot evaluation of one experiment, with baselines",
                         description="Run finetuning and evaluation of one experiment and write DIR/result.json. "
                                     "No CONFIG runs the built-in default experiment (glyphs, EfficientNet-Lite0).")
    run.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]",
                     help="an experiment YAML, then dotted overrides such as finetune.lr=1e-4")
    run.add_argument("--out", help="output directory (default runs/<name>)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--workers", type=int, metavar="N",
                     help="run multitask finetuning on N Ray Train workers (train.workers; 0: in this process)")
    run.add_argument("--gpu", action="store_true", help="one GPU per worker (train.use_gpu)")
    run.add_argument("--dry-run", action="store_true",
                     help="print resources, batch arithmetic and storage, then exit without training")
    run.set_defaults(fn=_cmd_run)

    ev = sub.add_parser("evaluate", help="few-shot evaluation of a checkpoint, or of the pretrained backbone alone")
    ev.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]")
    ev.add_argument("--checkpoint", help="a state dict written by 'mtft-ray run' (default: pretrained backbone)")
    ev.add_argument("--out", help="output directory (default runs/<name>-eval)")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(fn=_cmd_evaluate)

    sel = sub.add_parser("select", help="consistency-diversity task selection for a target; --ablation compares strategies",
                         description="Select finetuning tasks (or domains) for a target with the paper's Algorithm 1 "
                                     "and write DIR/selection.json + selection.png. With --ablation, finetune and "
                                     "evaluate every strategy per target domain and write DIR/ablation.json.")
    sel.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]")
    sel.add_argument("--ablation", action="store_true",
                     help="finetune + evaluate random / no_consistency / no_diversity / selected / all per target")
    sel.add_argument("--out", help="output directory")
    sel.add_argument("--no-progress", action="store_true")
    sel.set_defaults(fn=_cmd_select)

    sw = sub.add_parser("sweep", help="Ray Tune + Optuna sweep over task subsets, M, m, shots, learning rate",
                        description="Run a sweep YAML (base experiment + search space) with Ray Tune and write "
                                    "DIR/trials.csv. Rerunning the same command resumes an interrupted sweep.")
    sw.add_argument("args", nargs="+", metavar="CONFIG [key=value ...]",
                    help="a sweep YAML, then dotted overrides of the sweep file (search.num_samples=2)")
    sw.add_argument("--out", help="sweep folder, local or s3://bucket/prefix (default <storage.path>/<name>, "
                                  "else runs/sweeps/<name>)")
    sw.add_argument("--dry-run", action="store_true", help="print the space, trial count, concurrency and cost; exit")
    sw.add_argument("--cluster", metavar="CLUSTER.yaml",
                    help="with --dry-run: price the sweep on this Ray cluster YAML at full scale (its node types' "
                         "calibrations and mtft-ray.io/price-per-hour labels)")
    sw.add_argument("--price-per-hour", type=float, metavar="USD",
                    help="hourly price of one node trials run on (overrides labels and search.price_per_hour)")
    sw.add_argument("--add", type=int, metavar="N",
                    help="extend the finished sweep in --out by N samples (a grid: N more repeats); the searcher "
                         "starts warm with every finished trial")
    sw.add_argument("--resume", action="store_true",
                    help="continue the sweep stored in --out even if its config differs from CONFIG")
    sw.set_defaults(fn=_cmd_sweep)

    sc = sub.add_parser("screen", help="rank a sweep's task subsets cheaply from pretrained features, no finetuning",
                        description="Score every non-empty subset of a sweep's searched tasks.domains (or a seeded "
                                    "sample of them) from the pretrained backbone's cached features: Algorithm 1's "
                                    "consistency and diversity with the target, LogME, and prototype-classifier "
                                    "accuracy on the subset's classes; write DIR/screen.json + screen.csv and print "
                                    "the ranking. A sweep searches the best with tasks.domains: {screen: FILE, top: "
                                    "K}; 'mtft-ray analyze' then reports how well each proxy ranked the results.")
    sc.add_argument("args", nargs="+", metavar="SWEEP [key=value ...]",
                    help="a sweep YAML whose search.space has tasks.domains: {subset: [...]}, then dotted overrides")
    sc.add_argument("--out", metavar="DIR", help="output folder (default runs/screens/<sweep file name>); give the "
                                                "sweep's folder after it ran and 'mtft-ray analyze' finds the screen")
    sc.add_argument("--top", type=int, default=20, metavar="K", help="rows of the ranking printed (default 20)")
    sc.add_argument("--max-subsets", type=int, default=256, metavar="N",
                    help="score all subsets when there are at most N, else a seeded random sample of N (default 256)")
    sc.add_argument("--episodes", type=int, default=300, metavar="E",
                    help="prototype-classifier episodes per subset (default 300)")
    sc.add_argument("--seed", type=int,
                    help="seed of the subset sample, episodes and LogME draws (default: the sweep's)")
    sc.add_argument("--by", default="combined", choices=["combined", "consistency", "diversity", "coverage", "logme",
                                                         "proto_acc"],
                    help="what the rank orders by (default combined: the mean rank of LogME and prototype "
                         "accuracy)")
    sc.set_defaults(fn=_cmd_screen)

    bench = sub.add_parser("bench", help="benchmarks that print JSON",
                           description="Benchmarks that print JSON, each against a baseline measured in the same "
                                       "run. 'train' measures multitask finetuning images/s of an experiment's "
                                       "backbone and image size on this machine; --save stores it as this machine "
                                       "kind's calibration, which 'sweep --dry-run' prices sweeps with.")
    bench.add_argument("what", choices=["episodes", "selection", "train"])
    bench.add_argument("args", nargs="*", metavar="[CONFIG] [key=value ...]", help="train: the experiment measured")
    bench.add_argument("--steps", type=int, default=20, help="train: timed optimizer steps")
    bench.add_argument("--warmup", type=int, default=3, help="train: untimed steps first")
    bench.add_argument("--save", action="store_true", help="train: store the result as this machine kind's calibration")
    bench.set_defaults(fn=_cmd_bench)

    from mtft_ray.analysis.cli import register as register_analysis
    from mtft_ray.cli.data import register as register_data
    from mtft_ray.cluster.cli import register as register_cluster

    register_data(sub, _load)  # data prepare, data info
    register_analysis(sub)  # analyze
    register_cluster(sub)  # cluster check, submit, jobs, logs, stop
    return p


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parse_args``, except that ``[CONFIG] [key=value ...]`` may also come after an option
    (``run sweeps/tiny.yaml --no-progress tasks.M=10``): argparse leaves such words over, and
    they join the subcommand's CONFIG and overrides, in order."""
    ns, extra = parser.parse_known_args(argv)
    words = [a for a in extra if not a.startswith("-")]
    if words and isinstance(getattr(ns, "args", None), list) and len(words) == len(extra):
        ns.args += words
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return ns


def local_ray_env() -> None:
    """Without ``$RAY_ADDRESS`` a command starts its own local Ray: keep its every port on
    127.0.0.1 and skip the auth token. Ray reads these when imported, so this runs first; set
    either variable yourself to override."""
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main(argv: list[str] | None = None) -> int:
    local_ray_env()
    ns = parse_args(build_parser(), argv)
    logging.basicConfig(level=os.environ.get("MTFT_RAY_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        return ns.fn(ns)
    except MtftError as e:
        print(f"mtft-ray: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mtft-ray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
