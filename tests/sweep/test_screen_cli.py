"""``mtft-ray screen`` as a subprocess on a tiny folder dataset; a sweep whose space comes from the
screen file (resolved to its top-k subsets for grid, random and Optuna, refused with one clear line
when the file is missing or made for something else); and a real sweep over a screen's top
subsets, whose trials report the very consistency and diversity the screen computed."""

from __future__ import annotations

import copy
import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "cli"))
from test_cli import make_folder_tree, mtft, tiny_config

from mtft_ray.errors import MtftError
from mtft_ray.sweep.load import load_sweep
from mtft_ray.sweep.screen import rank_rows, screen_sweep
from mtft_ray.sweep.space import check_data, suggest, trial_count, tune_space

ITEMS = ["dom0", "dom1", "dom2"]
ALL_SUBSETS = [["dom0"], ["dom1"], ["dom2"], ["dom0", "dom1"], ["dom0", "dom2"], ["dom1", "dom2"],
               ["dom0", "dom1", "dom2"]]


def write_sweep(root: Path, name: str, dist: dict, algorithm: str = "grid", **base_sections) -> Path:
    """A sweep over tasks.domains on the 5-domain tree: dom4 held out as the target, dom3 validation."""
    base = yaml.safe_load(tiny_config(root, methods=["multitask"], tasks={"M": 3},
                                      finetune={"epochs": 1, "tasks_per_step": 3, "val_episodes": 5},
                                      eval={"shots": [1], "episodes": 20}, selection={"target_domain": "dom4"},
                                      **base_sections).read_text())
    base["data"]["split"] = {"target_domains": ["dom4"], "val_domains": ["dom3"]}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": base, "search": {
        "space": {"tasks.domains": dist}, "algorithm": algorithm, "metric": "acc_1shot", "num_samples": 1}}))
    return path


@pytest.fixture(scope="module")
def screened(tmp_path_factory) -> dict:
    """One real screen of the 7 subsets of three source domains (shared by this module's tests)."""
    root = tmp_path_factory.mktemp("screen")
    make_folder_tree(root / "data", domains=5)
    path = write_sweep(root, "subsets", {"subset": ITEMS})
    r = mtft("screen", str(path), "--out", str(root / "screen"), "--episodes", "100", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((root / "screen" / "screen.json").read_text())
    return {"root": root, "sweep": path, "stdout": r.stdout, "doc": doc}


@pytest.fixture
def cache_env(screened, monkeypatch):
    monkeypatch.setenv("MTFT_RAY_CACHE", str(screened["root"] / "cache"))  # what mtft() gives the subprocesses
    return screened


def test_screen_writes_ranked_rows_for_every_subset(screened):
    doc, root = screened["doc"], screened["root"]
    rows = doc["rows"]
    assert sorted(r["subset"] for r in rows) == sorted(ALL_SUBSETS)
    assert [r["rank"] for r in rows] == list(range(1, 8))
    assert [r["combined"] for r in rows] == sorted(r["combined"] for r in rows)  # ranked by the mean rank
    for r in rows:
        assert -1 <= r["consistency"] <= 1 and 0 <= r["coverage"] <= 1 and r["diversity"] < 0
        assert 0 <= r["proto_acc"] <= 1 and r["proto_ci95"] > 0 and r["logme"] < 0.5
        assert set(r["ranks"]) == {"consistency", "diversity", "coverage", "logme", "proto_acc"}
    # coverage never falls when a domain is added (a property of the measure, here on real features)
    cover = {tuple(r["subset"]): r["coverage"] for r in rows}
    assert all(cover[s] <= cover[tuple(ITEMS)] + 1e-12 for s in cover)
    assert doc["key"] == "tasks.domains" and doc["items"] == ITEMS and doc["target"] == "dom4"
    assert doc["subsets_scored"] == doc["subsets_total"] == 7 and not doc["sampled"]
    assert doc["episodes"] == {"n_way": 3, "n_shot": 1, "n_query": 3, "episodes": 100, "prototype": "raw_mean"}
    assert doc["combined"] == ["logme", "proto_acc"]
    assert set(doc["feature_cache"]) == {"source", "target"}
    assert (root / "cache" / "features" / f"{doc['feature_cache']['source']}.npy").is_file()
    assert doc["seconds"]["total"] > 0 and doc["seed"] == 0
    with open(root / "screen" / "screen.csv") as f:
        table = list(csv.DictReader(f))
    assert [x["subset"] for x in table] == ["+".join(r["subset"]) for r in rows] and table[0]["rank"] == "1"
    out = screened["stdout"]
    assert "all 7 subsets, ranked by combined" in out and out.count("dom0") >= 4
    assert "tasks.domains: {screen: " in out


def test_screen_samples_subsets_when_capped_and_is_repeatable(screened):
    root = screened["root"]
    r = mtft("screen", str(screened["sweep"]), "--out", str(root / "capped"), "--max-subsets", "3",
             "--episodes", "100", "--by", "logme", cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((root / "capped" / "screen.json").read_text())
    assert doc["sampled"] and doc["subsets_scored"] == 3 and len(doc["rows"]) == 3
    assert "a seeded sample of 3 of the 7 subsets" in r.stdout
    assert [r["logme"] for r in doc["rows"]] == sorted((r["logme"] for r in doc["rows"]), reverse=True)
    full = {tuple(x["subset"]): x for x in screened["doc"]["rows"]}
    for row in doc["rows"]:  # the same seed and episodes: the same numbers as in the full screen
        assert row["proto_acc"] == full[tuple(row["subset"])]["proto_acc"]
        assert row["diversity"] == pytest.approx(full[tuple(row["subset"])]["diversity"], rel=1e-9)


def test_screen_refuses_a_sweep_without_a_subset_and_bad_counts(cache_env):
    root = cache_env["root"]
    path = write_sweep(root, "no-subset", {"choice": [["dom0"], ["dom1"]]})
    with pytest.raises(MtftError, match=r"no-subset.yaml: search.space has no subset to screen \(give e.g."):
        screen_sweep(path, out=root / "x")
    with pytest.raises(MtftError, match="--by 'size': give one of combined, consistency"):
        screen_sweep(cache_env["sweep"], by="size")
    assert not (root / "x").exists()


def test_a_sweep_over_the_screen_resolves_to_its_top_k_for_grid_random_and_optuna(cache_env):
    root, doc = cache_env["root"], cache_env["doc"]
    top3 = [r["subset"] for r in doc["rows"][:3]]
    path = write_sweep(root, "from-screen", {"screen": "screen/screen.json", "top": 3})  # relative to the sweep file
    sweep, base = load_sweep(path)
    d = sweep.search.space["tasks.domains"]
    assert d.kind == "choice" and d.choice == top3 and d.subset == ITEMS and d.top == 3
    assert Path(d.screen) == (root / "screen" / "screen.json").resolve()
    assert "top 3 subsets of screen" in d.describe() and "+".join(top3[0]) in d.describe()
    assert trial_count(sweep) == 3
    assert tune_space(sweep)["tasks.domains"] == {"grid_search": top3}
    check_data(sweep, base, str(path))  # every top subset's episodes fit the data
    random_sweep, _ = load_sweep(write_sweep(root, "from-screen-random", {"screen": "screen/screen.json", "top": 3},
                                             algorithm="random"))
    assert tune_space(random_sweep)["tasks.domains"].categories == top3
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    spec = {k: v.model_dump(mode="json", by_alias=True, exclude_none=True) for k, v in sweep.search.space.items()}
    seen = []
    for _ in range(12):
        trial = study.ask()
        value = suggest(trial, spec)["tasks.domains"]
        assert value in top3 and json.loads(trial.params["tasks.domains"]) == value  # Optuna holds JSON text
        seen.append(value)
    assert all(s in seen for s in top3)
    default_top, _ = load_sweep(write_sweep(root, "top-default", {"screen": "screen/screen.json"}))
    assert default_top.search.space["tasks.domains"].choice == [r["subset"] for r in doc["rows"][:5]]


def _variant(root: Path, name: str, change) -> str:
    doc = json.loads((root / "screen" / "screen.json").read_text())
    change(doc)
    (root / f"{name}.json").write_text(json.dumps(doc))
    return f"{name}.json"


def test_screen_files_made_for_something_else_are_refused(cache_env):
    root = cache_env["root"]
    cases = [
        ({"screen": "nowhere/screen.json"}, "does not exist (write it with 'mtft-ray screen SWEEP.yaml"),
        ({"screen": _variant(root, "target", lambda d: d.update(target="dom3"))},
         "was made for the target 'dom3', but the sweep's target is 'dom4'"),
        ({"screen": _variant(root, "items", lambda d: d.update(items=["dom0", "dom1"]))},
         "ranks subsets with ['dom2'], which are not among its items"),
        ({"screen": "screen/screen.json", "subset": ["dom0", "dom1"]},
         "was made for the items ['dom0', 'dom1', 'dom2'], not ['dom0', 'dom1']"),
        ({"screen": _variant(root, "backbone", lambda d: d.update(backbone="resnet18"))},
         "scored 'resnet18' features, but the sweep finetunes"),
        ({"screen": _variant(root, "norows", lambda d: d.update(rows=[]))}, "is not a screen file"),
    ]
    for dist, message in cases:
        with pytest.raises(MtftError, match="search.space.tasks.domains: .*") as e:
            load_sweep(write_sweep(root, "bad", dist))
        assert message in str(e.value), (dist, str(e.value))
    with pytest.raises(MtftError, match="top applies to screen only"):
        load_sweep(write_sweep(root, "bad", {"subset": ITEMS, "top": 2}))


def test_the_sweep_cli_exits_2_with_one_line_for_a_missing_or_foreign_screen(screened):
    root = screened["root"]
    foreign = _variant(root, "foreign", lambda d: d.update(key="tasks.M"))
    for screen, message in (("missing.json", "missing.json does not exist"),
                            (foreign, "ranks subsets of 'tasks.M', not 'tasks.domains'")):
        path = write_sweep(root, "cli-bad", {"screen": screen, "top": 2})
        r = mtft("sweep", str(path), "--dry-run", cwd=root)
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
        assert r.stderr.startswith("mtft-ray: error: ") and message in r.stderr, r.stderr


@pytest.mark.slow
def test_a_real_sweep_over_the_top_two_reports_what_the_screen_computed(screened):
    """Grid over the screen's two best subsets: two trials, on exactly those domains, whose reported
    consistency and diversity are the screen's; analyze still reads the subsets per item,
    and the screen found through sweep.json is checked against the finetuned accuracy."""
    root, doc = screened["root"], screened["doc"]
    path = write_sweep(root, "top2", {"screen": "screen/screen.json", "top": 2})
    out = root / "top2-sweep"
    r = mtft("sweep", str(path), "--out", str(out), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    screen_rows = {"+".join(x["subset"]): x for x in doc["rows"]}
    assert sorted(x["tasks.domains"] for x in rows) == sorted("+".join(x["subset"]) for x in doc["rows"][:2])
    for x in rows:
        s = screen_rows[x["tasks.domains"]]
        assert float(x["selection_mean_consistency"]) == pytest.approx(s["consistency"], rel=1e-6)
        assert float(x["selection_diversity"]) == pytest.approx(s["diversity"], rel=1e-5)
        # coverage's cosines are taken about a centre: the screen's is the mean of every candidate's
        # tasks (one frame for all subsets, as greedy selection over the whole pool), a trial's the
        # mean of its own subset's tasks; so the two differ, by a little
        assert float(x["selection_coverage"]) == pytest.approx(s["coverage"], abs=0.05)
    from mtft_ray.analysis.fetch import open_sweep
    from mtft_ray.analysis.load import load_sweep_dir
    from mtft_ray.analysis.screening import screening_for

    with open_sweep(str(out), None) as loc:
        data = load_sweep_dir(loc)
        agreement = screening_for(data)
    # found through sweep.json, which recorded the screen file the space was resolved from
    assert agreement.screen == str((root / "screen" / "screen.json").resolve())
    assert agreement.n == 2 and agreement.pick["of"] == 2
    assert agreement.pick["subset"] == "+".join(doc["rows"][0]["subset"])
    assert "only 2 trial(s)" in agreement.correlations[0].note  # two subsets carry no rank correlation
    a = mtft("analyze", str(out), cwd=root)
    assert a.returncode == 0, a.stderr[-2000:]
    with open(out / "analysis" / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert all(t["tasks.domains[dom1]"] == str("dom1" in t["tasks.domains"].split("+")) for t in table)


def test_rank_rows_orders_by_the_mean_rank_or_one_proxy():
    rows = [{"subset": ["a"], "logme": 0.1, "proto_acc": 0.9, "coverage": 0.5},
            {"subset": ["b"], "logme": 0.3, "proto_acc": 0.5, "coverage": 0.6},
            {"subset": ["a", "b"], "logme": 0.2, "proto_acc": 0.8, "coverage": 0.7}]
    ranked = rank_rows(copy.deepcopy(rows), ["logme", "proto_acc", "coverage"], "combined")
    assert [r["subset"] for r in ranked] == [["a", "b"], ["b"], ["a"]] and [r["rank"] for r in ranked] == [1, 2, 3]
    assert ranked[0]["combined"] == pytest.approx(5 / 3) and ranked[0]["ranks"] == {"logme": 2.0, "proto_acc": 2.0,
                                                                                    "coverage": 1.0}
    by_proto = rank_rows(copy.deepcopy(rows), ["logme"], "proto_acc")
    assert [r["subset"] for r in by_proto] == [["a"], ["a", "b"], ["b"]]
    with pytest.raises(MtftError, match="rank by 'size'"):
        rank_rows(copy.deepcopy(rows), ["logme"], "size")
