"""A sweep folder → one row per trial (config, sizes, selection, accuracy ± CI, time, checkpoint, status).

Reads only JSON, YAML and CSV files, never Tune's pickles, so a sweep can be analysed while it
runs and without Ray. Each trial folder's ``result.json`` holds one JSON line per report; the
last line carrying the sweep's metric (``acc_1shot``) holds the final metrics, earlier lines
may be per-epoch reports (``epoch``, ``val_acc``). A line cut off mid-write is skipped and
named in :attr:`SweepData.problems` when a later line holds the final metrics, or while the
trial may still be writing it; otherwise the trial is ``corrupt``.

The sweep is *interrupted* when it has no ``trials.csv`` and its driver is gone: ``driver.json``
names a pid that is dead on this host, or its heartbeat is older than :data:`STALE_S`.

Status of a trial, first rule that applies:

==================  ===========================================================================
``corrupt``         its ``result.json`` cannot be read, or holds a line that is not a JSON
                    object (cut off mid-write) and no final report after it, unless the trial
                    may still be writing that last line; the note says which file and why
``finished``        a report carries the metric (even beside the error.txt of a failed earlier
                    attempt), unless Tune says ERROR
``errored``         ``error.txt`` in its folder, or Tune / ``trials.csv`` say ERROR
``interrupted``     the sweep is interrupted and Tune did not end the trial: rerunning resumes it
``running``         Tune's state says RUNNING / PAUSED (or PENDING, ``pending`` if no folder yet)
``stopped early``   ``trials.csv`` says STOPPED, or the sweep is over (``trials.csv`` written) or
                    Tune says TERMINATED and the trial reported without the metric: the
                    scheduler (ASHA) stopped it
``incomplete``      the sweep is over and the trial never reported (interrupted; a rerun resumes it)
``running``         otherwise: the sweep is still going (no ``trials.csv``)
==================  ===========================================================================

Example:
    >>> data = load_sweep_dir(Location("/work/qs0", Path("/work/qs0")))   # doctest: +SKIP
    >>> data.trials[["trial_id", "status", "acc_1shot"]]                   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mtft_ray.analysis.fetch import Location
from mtft_ray.errors import MtftError
from mtft_ray.io import verify_digest
from mtft_ray.sweep.schema import DRIVER_FILE, HEARTBEAT_S, apply_params, flag_name

STATUSES = ("finished", "stopped early", "running", "pending", "incomplete", "interrupted", "errored", "corrupt")
CONFIG_KEYS = ("selection.strategy", "selection.target_domain", "backbone.name", "tasks.M", "tasks.n_way",
               "tasks.n_shot", "tasks.n_query", "finetune.lr", "finetune.epochs")
TRIAL_FILES = ("params.json", "result.json", "error.txt")
SPEND = ("trial_hours", "gpu_hours", "cpu_hours", "dollars")  # what a trial cost, where it reports it
STATE_NEWER_S = 60.0  # Tune's state this much newer than trials.csv: the sweep was resumed and runs again
STALE_S = 10 * HEARTBEAT_S  # a driver heartbeat this old: the driver is gone
_ACC = re.compile(r"^(?:(\w+?)_)?(acc|ci95)_(\d+)shot$")
_TRIAL_ID = re.compile(r"_([0-9a-f]{5}_\d{5})_")


@dataclass
class SweepData:
    """A sweep's trials and what is known about the sweep.

    Attributes:
        location: where it was read from.
        name: the sweep's name.
        metric, mode: what the search optimised (``acc_1shot``, ``max``); of a multi-objective
            sweep, its first (primary) metric, which single-metric tables, fits and plots read.
        space: searched key → its distribution as stored in ``sweep.json`` (``{"choice": [...]}``, ...).
        base: the resolved base experiment (``{}`` without ``sweep.json``).
        ended: the sweep is not running: ``trials.csv`` written and not resumed since, or it was
            interrupted.
        interrupted: why the sweep is known to have stopped without ``trials.csv`` (its driver
            is gone); ``None`` when it ended, runs, or no ``driver.json`` tells.
        trials: one row per trial (see :func:`load_sweep_dir`).
        problems: what could not be read, one line each.
        metrics, modes: every metric searched and its mode (``[acc_1shot, gpu_hours]``,
            ``[max, min]``); ``[metric]`` and ``[mode]`` (the default) for a single-objective sweep.
    """

    location: Location
    name: str
    metric: str
    mode: str
    space: dict[str, dict]
    base: dict
    ended: bool
    trials: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    interrupted: str | None = None
    metrics: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.metrics = list(self.metrics) or [self.metric]
        self.modes = list(self.modes) or [self.mode] * len(self.metrics)

    @property
    def multi(self) -> bool:
        """Several metrics searched: a multi-objective sweep, with a Pareto front."""
        return len(self.metrics) > 1

    @property
    def params(self) -> list[str]:
        """The searched keys (columns of :attr:`trials`)."""
        return list(self.space)

    @property
    def subsets(self) -> dict[str, dict[str, str]]:
        """Searched subsets: key → its include-flag columns → item (``tasks.domains`` →
        ``{"tasks.domains[lao]": "lao", ...}``)."""
        return {k: {flag_name(k, item): item for item in spec["subset"]} for k, spec in self.space.items()
                if "subset" in spec}

    @property
    def ci_column(self) -> str | None:
        return self.ci_for(self.metric)

    @staticmethod
    def ci_for(metric: str) -> str | None:
        """The column of ``metric``'s 95% CI (``acc_1shot`` → ``ci95_1shot``), or None: no CI.

        >>> SweepData.ci_for("multitask_acc_5shot"), SweepData.ci_for("gpu_hours")
        ('multitask_ci95_5shot', None)
        """
        m = _ACC.match(metric)
        return f"{m.group(1) + '_' if m.group(1) else ''}ci95_{m.group(3)}shot" if m and m.group(2) == "acc" else None

    def finished(self) -> pd.DataFrame:
        """Finished trials with a finite metric."""
        t = self.trials
        if t.empty or self.metric not in t:
            return t.iloc[0:0]
        return t[(t["status"] == "finished") & pd.to_numeric(t[self.metric], errors="coerce").notna()]


def read_json(path: Path, problems: list[str], what: str) -> Any:
    """A JSON file's content, or ``None`` (missing, or unreadable: noted in ``problems``)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as e:
        problems.append(f"{what}: {path.name} is not valid JSON ({str(e)[:80]}); ignored")
        return None


def _parse_reports(path: Path) -> tuple[list[dict], str | None, bool]:
    """The JSON-object lines of a trial's ``result.json``; what is wrong with it (or ``None``); and
    whether that is only its last line, cut off without a newline (a write that may be in progress)."""
    if not path.is_file():
        return [], None, False
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return [], f"cannot be read ({e.strerror if isinstance(e, OSError) else e})", False
    records, bad, lines = [], None, text.splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            bad = bad or f"line {i} is truncated or invalid ({str(e)[:80]})"
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad = bad or f"line {i} is not a JSON object"
    partial = bad is not None and bad.startswith(f"line {len(lines)} is truncated") and not text.endswith("\n")
    return records, bad, partial


def _driver_gone(folder: Path, problems: list[str]) -> str | None:
    """Why the sweep's driver is known to be gone (``driver.json``: a dead pid on this host, or a stale
    heartbeat), else ``None``."""
    doc = read_json(folder / DRIVER_FILE, problems, "sweep")
    if not isinstance(doc, dict):
        return None
    pid, host, beat = doc.get("pid"), doc.get("host"), doc.get("heartbeat", doc.get("started"))
    who = f"its driver (pid {pid} on {host})"
    if host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
        return f"{who} is gone"
    if isinstance(beat, (int, float)) and time.time() - beat > STALE_S:
        return f"{who} last wrote a heartbeat {(time.time() - beat) / 60:.0f} min ago"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, another user's
        return True
    return True


def _tune_state(folder: Path, problems: list[str]) -> tuple[dict[str, dict], float | None]:
    """Per trial folder name: Tune's status, trial id, config and start time, from every
    ``experiment_state-*.json``, oldest first, so the newest word on a trial wins (an extended sweep
    has one state per segment, a resumed one a newer state of the same trials). The files are
    JSON; their format is Tune's, so an unreadable one is skipped and named."""
    states = sorted(folder.glob("experiment_state-*.json"))
    if not states:
        return {}, None
    out: dict[str, dict] = {}
    for state in states:
        try:
            for entry in json.loads(state.read_text())["trial_data"]:
                meta, runtime = json.loads(entry[0]), json.loads(entry[1])
                out[meta["relative_logdir"]] = {"status": meta.get("status"), "trial_id": meta.get("trial_id"),
                                                "config": meta.get("config") or {},
                                                "start": runtime.get("start_time")}
        except (ValueError, KeyError, TypeError, IndexError, OSError) as e:
            problems.append(f"Tune's {state.name} could not be read ({type(e).__name__}); "
                            f"statuses of its trials come from the trial folders alone")
    return out, states[-1].stat().st_mtime


def _csv_rows(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {r["trial_id"]: r for r in csv.DictReader(f) if r.get("trial_id")}


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _trial_config(folder: Path, base: dict, params: dict) -> dict:
    """The trial's resolved experiment config: its own ``run/config.yaml``, else base + params."""
    own = folder / "run" / "config.yaml"
    if own.is_file():
        try:
            cfg = yaml.safe_load(own.read_text())
            if isinstance(cfg, dict):
                return cfg
        except yaml.YAMLError:
            pass
    return apply_params(base, params)


def _status(*, error: bool, final: bool, reports: int, tune: str | None, ended: bool, has_folder: bool,
            interrupted: bool = False) -> str:
    if final and tune != "ERROR":  # error.txt of an earlier attempt stays when a retry finishes
        return "finished"
    if error or tune == "ERROR":
        return "errored"
    if interrupted and tune != "TERMINATED":
        return "interrupted"
    if tune in ("RUNNING", "PAUSED") or (tune == "PENDING" and has_folder):
        return "running"
    if tune == "PENDING":
        return "pending"
    if ended or tune == "TERMINATED":
        return "stopped early" if reports else "incomplete"
    return "running"


def _number(v: Any) -> Any:
    """CSV cells back to numbers where they are numbers."""
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return None if v == "" else v
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    return v


def _last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "error.txt is empty"


def _selection(run: dict | None) -> dict[str, Any]:
    """Subset members, k, diversity, coverage, consistency from the experiment's own result."""
    if not run:
        return {}
    sel = run.get("selection")
    if sel:
        return {"subset": "; ".join(map(str, sel.get("selected") or [])), "k": sel.get("k"),
                "diversity": sel.get("diversity"), "coverage": sel.get("coverage"),
                "consistency": sel.get("mean_consistency")}
    domains = _get(run, "split.source.domains") or []
    return {"subset": f"all {len(domains)} source domains" if domains else None, "k": len(domains) or None}


def _times(reports: list[dict], folder: Path | None, tune_start: float | None) -> tuple[float | None, float | None]:
    """Start and end (epoch seconds): from the last report (``timestamp - time_total_s``), else file times."""
    stamped = [r for r in reports if isinstance(r.get("timestamp"), (int, float))]
    if stamped:
        last = stamped[-1]
        return float(last["timestamp"]) - float(last.get("time_total_s") or 0.0), float(last["timestamp"])
    if folder is None or not folder.is_dir():
        return tune_start, None
    mtimes = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()]
    if not mtimes:
        return tune_start, None
    return tune_start or min(mtimes), max(mtimes)


def _note(status: str, folder: Path, csv_row: dict | None, reports: int, metric: str) -> str | None:
    """Why a trial has no result: its error, or what it reported so far."""
    if status == "errored":
        return _last_line(folder / "error.txt") if (folder / "error.txt").is_file() else (csv_row or {}).get("error")
    return {"stopped early": f"stopped after {reports} report(s) without {metric} (scheduler)",
            "running": f"{reports} report(s) so far",
            "incomplete": "never reported (interrupted; rerunning the sweep resumes it)",
            "interrupted": f"{reports} report(s), then the sweep's driver stopped; rerunning the sweep resumes it",
            "pending": "waiting for resources"}.get(status)


def _trial_params(folder: Path, reports: list[dict], tune: dict, csv_row: dict | None, data: SweepData,
                  trial: str) -> dict:
    """The trial's sampled values: ``params.json``, else Tune's state, a report's config, or ``trials.csv``."""
    return (read_json(folder / "params.json", data.problems, f"trial {trial}") or tune.get("config")
            or next((r["config"] for r in reports if isinstance(r.get("config"), dict)), None)
            or {k: _number(csv_row[k]) for k in data.space if csv_row and k in csv_row})


def _sizes(last: dict, cfg: dict) -> dict[str, Any]:
    """M, m, M·m as reported, else as configured (a trial that has not reported them yet)."""
    if last.get("M") is not None:
        return {k: last.get(k) for k in ("M", "m", "Mm")}
    M, n_way, shot, query = (_get(cfg, f"tasks.{k}") for k in ("M", "n_way", "n_shot", "n_query"))
    m = n_way * (shot + query) if None not in (n_way, shot, query) else None
    return {"M": M, "m": m, "Mm": M * m if M is not None and m is not None else None}


def _trial_row(loc: Location, rel: str, data: SweepData, tune: dict, csv_row: dict | None) -> dict[str, Any]:
    """One row from a trial folder (``rel`` under the sweep) plus Tune's and ``trials.csv``'s view of it."""
    folder = loc.local / rel
    m = _TRIAL_ID.search(rel)
    trial = tune.get("trial_id") or (csv_row or {}).get("trial_id") or (m.group(1) if m else rel)
    reports, bad, partial = _parse_reports(folder / "result.json")
    params = _trial_params(folder, reports, tune, csv_row, data, trial) or {}
    finals = [r for r in reports if r.get(data.metric) is not None]
    final = dict(finals[-1]) if finals else {}
    if not final and csv_row and csv_row.get(data.metric) not in (None, ""):
        final = {k: _number(v) for k, v in csv_row.items()}  # a trials.csv row with no folder left
    status = _status(error=(folder / "error.txt").is_file() or (csv_row or {}).get("status") == "ERROR",
                     final=bool(final), reports=len(reports), tune=tune.get("status"), ended=data.ended,
                     has_folder=folder.is_dir(), interrupted=data.interrupted is not None)
    if bad and (status == "finished" or (status == "running" and partial)):  # or its last line is being written
        data.problems.append(f"trial {trial}: result.json {bad} (partly written?); skipped")
    elif bad:
        status = "corrupt"
        data.problems.append(f"trial {trial}: result.json {bad}: the trial is corrupt "
                             f"({loc.address(f'{rel}/result.json')})")
    cfg = _trial_config(folder, data.base, params)
    row: dict[str, Any] = {"trial_id": trial, "status": status}
    row.update({k: params.get(k, _get(cfg, k)) for k in dict.fromkeys([*data.space, *CONFIG_KEYS])})
    last = final or (reports[-1] if reports else {})
    row.update(_sizes(last, cfg))
    run_doc = read_json(folder / "run" / "result.json", data.problems, f"trial {trial} run") if final else None
    sel = _selection(run_doc)
    row.update({"k": sel.get("k", final.get("selection_k")), "subset": sel.get("subset"),
                "diversity": sel.get("diversity", final.get("selection_diversity")),
                "coverage": sel.get("coverage", final.get("selection_coverage")),
                "consistency": sel.get("consistency", final.get("selection_mean_consistency"))})
    row.update({k: v for k, v in final.items() if _ACC.match(k)})
    vals = [r["val_acc"] for r in reports if isinstance(r.get("val_acc"), (int, float))]
    row.update(val_acc=max(vals) if vals else final.get("val_acc"), reports=len(reports), epoch=last.get("epoch"))
    row.update({k: final.get(k) for k in ("seconds", "train_seconds", "images_per_s", "method", "config_hash",
                                          "warnings")})
    row.update({k: final[k] for k in (*SPEND, *data.metrics) if k not in row and k in final})  # objectives
    row["started_at"], row["ended_at"] = _times(reports, folder if folder.is_dir() else None, tune.get("start"))
    ckpt = Path(str(final.get("checkpoint") or "")).name
    row["checkpoint"] = loc.address(f"{rel}/run/{ckpt}") if ckpt and loc.has_file(f"{rel}/run/{ckpt}") else None
    if ckpt and row["checkpoint"] is None:
        data.problems.append(f"trial {trial}: its checkpoint {ckpt} is not in the sweep folder")
    recorded = ((run_doc or {}).get("checkpoints") or {}) if isinstance(run_doc, dict) else {}
    digest = next((d for d in recorded.values() if d.get("file") == ckpt), None)
    if row["checkpoint"] and digest and loc.remote_files is None:  # S3 checkpoints are not downloaded to check
        damage = verify_digest(folder / "run" / ckpt, digest)
        if damage:
            row["checkpoint"] = None
            data.problems.append(f"trial {trial}: its checkpoint is damaged ({damage}): not offered")
    row["note"] = (f"corrupt: {loc.address(f'{rel}/result.json')}: {bad}" if status == "corrupt"
                   else _note(status, folder, csv_row, len(reports), data.metric))
    row["trial_dir"] = rel
    _subset_columns(row, data)
    return row


def _subset_columns(row: dict[str, Any], data: SweepData) -> None:
    """A searched subset as ``a+b`` text plus one boolean column per item (its include flag)."""
    for key, flags in data.subsets.items():
        value = row.get(key)
        items = value if isinstance(value, list) else value.split("+") if isinstance(value, str) and value else None
        if items is not None:
            row[key] = "+".join(map(str, items))
            row.update({flag: item in items for flag, item in flags.items()})


def _csv_status(row: dict, csv_row: dict | None) -> dict:
    """What ``trials.csv`` (the sweep's final word) says of a trial without a result: ERROR or STOPPED."""
    said = (csv_row or {}).get("status")
    if row["status"] == "corrupt":
        return row
    if row["status"] != "finished" and said == "ERROR":
        row.update(status="errored", note=row["note"] or csv_row.get("error"))
    elif row["status"] != "finished" and said == "STOPPED":
        row.update(status="stopped early", note=row["note"] or "stopped by the scheduler")
    return row


def _trial_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.is_dir() and p.name != "analysis" and any((p / f).is_file() for f in TRIAL_FILES))


def load_sweep_dir(loc: Location) -> SweepData:
    """Read the sweep folder at ``loc`` into one row per trial.

    Columns: ``trial_id``, ``status``, the searched keys and the config keys of
    :data:`CONFIG_KEYS` (dotted), ``M``, ``m``, ``Mm``, ``k``, ``subset`` (the selected source
    domains), ``diversity``, ``coverage``, ``consistency``, ``[<method>_]acc_<s>shot`` and
    ``[<method>_]ci95_<s>shot`` per shot, ``val_acc`` (best validation-episode accuracy),
    ``reports``, ``epoch``, ``seconds``, ``train_seconds``, ``images_per_s``, ``method``,
    ``config_hash``, ``warnings`` (e.g. the pretrained weights were kept), ``started_at`` / ``ended_at`` (epoch seconds), ``checkpoint`` (its address in
    the sweep folder), ``note`` (error message, or why a trial has no result), ``trial_dir``.
    Where trials report them: ``trial_hours``, ``gpu_hours``, ``cpu_hours``, ``dollars`` (:data:`SPEND`)
    and every metric a multi-objective sweep searched.

    Raises:
        MtftError: the folder holds neither ``sweep.json`` nor a trial folder.
    """
    folder, problems = loc.local, []
    meta = read_json(folder / "sweep.json", problems, "sweep")
    trial_dirs = _trial_folders(folder)
    if not isinstance(meta, dict) and not trial_dirs:
        raise MtftError(f"no sweep at {loc.uri}: no sweep.json and no trial folders "
                        f"(give the folder 'mtft-ray sweep --out' wrote)")
    meta = meta if isinstance(meta, dict) else {}
    if not meta:
        problems.append("no sweep.json: search space unknown; metric assumed acc_1shot (max)")
    search = _get(meta, "sweep.search") or {}
    space = {k: {kk: vv for kk, vv in d.items() if vv is not None and vv is not False}  # as written: choice / int / float
             for k, d in (search.get("space") or {}).items()}
    tune, state_mtime = _tune_state(folder, problems)
    csv_path = folder / "trials.csv"
    ended = csv_path.is_file() and not (state_mtime and state_mtime > csv_path.stat().st_mtime + STATE_NEWER_S)
    gone = None if ended else _driver_gone(folder, problems)
    metrics, modes = _objectives(search)
    data = SweepData(loc, _get(meta, "sweep.name") or loc.name, metrics[0], modes[0], space, meta.get("base") or {},
                     ended or gone is not None, pd.DataFrame(), problems, gone, metrics, modes)
    csv_rows = _csv_rows(csv_path)
    rels = list(dict.fromkeys([*trial_dirs, *(r for r, t in tune.items() if t.get("status") == "PENDING")]))
    rows = [_trial_row(loc, rel, data, tune.get(rel, {}), None) for rel in rels]
    for row in rows:
        _csv_status(row, csv_rows.pop(row["trial_id"], None))
    for t, r in csv_rows.items():
        rows.append(_csv_status(_trial_row(loc, f"(no folder) {t}", data, {}, r), r))
    data.trials = _frame(rows)
    return data


def _objectives(search: dict) -> tuple[list[str], list[str]]:
    """The metrics and modes of ``sweep.json``'s search (a name or a list of them each).

    >>> _objectives({"metric": ["acc_1shot", "gpu_hours"], "mode": ["max", "min"]}), _objectives({})
    ((['acc_1shot', 'gpu_hours'], ['max', 'min']), (['acc_1shot'], ['max']))
    """
    metric, mode = search.get("metric", "acc_1shot"), search.get("mode", "max")
    metrics = list(metric) if isinstance(metric, list) else [metric]
    modes = list(mode) if isinstance(mode, list) else [mode] * len(metrics)
    return metrics, modes


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for col in ("started_at", "ended_at"):
        df[col] = pd.to_datetime(pd.to_numeric(df[col], errors="coerce"), unit="s", utc=True)
    for col in df.columns:
        if df[col].dtype == object and df[col].map(lambda v: isinstance(v, (list, dict))).any():
            df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    return df.sort_values("trial_id", kind="stable").reset_index(drop=True)
