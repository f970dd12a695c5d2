import numpy as np
import pytest

from mtft_ray.config.schema import SplitConfig, TaskConfig
from mtft_ray.data.splits import split_classes
from mtft_ray.errors import MtftError
from mtft_ray.tasks.pool import make_tasks, read_manifest, write_manifest
from tests.conftest import make_store


@pytest.fixture
def setup(small_store):
    return small_store, split_classes(small_store, SplitConfig(target_domains=1, val_domains=1))


def test_task_shapes_and_membership(setup):
    store, split = setup
    cfg = TaskConfig(n_way=3, n_shot=2, n_query=3, M=40)
    t = make_tasks(store, split.source, cfg)
    assert t.support.shape == (40, 3, 2) and t.query.shape == (40, 3, 3) and t.m == 15
    for i in range(len(t)):
        assert len(set(t.classes[i])) == 3
        assert set(t.classes[i]) <= set(split.source)
        sup, qry = t.support[i], t.query[i]
        assert not set(sup.ravel()) & set(qry.ravel())
        for j, c in enumerate(t.classes[i]):
            assert (store.labels[sup[j]] == c).all() and (store.labels[qry[j]] == c).all()
        # within-domain tasks: one domain per task
        assert len(set(store.class_domain[t.classes[i]])) == 1 == len({t.domains[i]})


def test_tasks_are_fixed_by_index(setup):
    store, split = setup
    cfg = TaskConfig(n_way=3, n_shot=1, n_query=2, M=30)
    a = make_tasks(store, split.source, cfg)
    b = make_tasks(store, split.source, cfg.model_copy(update={"M": 10}))
    assert np.array_equal(a.support[:10], b.support) and np.array_equal(a.query[:10], b.query)
    c = make_tasks(store, split.source, cfg, M=5, start=10)
    assert np.array_equal(a.classes[10:15], c.classes)
    other = make_tasks(store, split.source, cfg.model_copy(update={"seed": 1}))
    assert not np.array_equal(a.support, other.support)


def test_more_ways_than_classes_is_a_clear_error(setup):
    store, split = setup
    with pytest.raises(MtftError, match="7-way tasks .* need 7 classes"):
        make_tasks(store, split.source, TaskConfig(n_way=7, M=3))  # 6 classes per domain
    with pytest.raises(MtftError, match=">= 12 samples"):
        make_tasks(store, split.source, TaskConfig(n_way=2, n_shot=2, n_query=10, M=3))  # 10 per class


def test_mixed_domain_tasks(setup):
    store, split = setup
    t = make_tasks(store, split.source, TaskConfig(n_way=8, M=20, within_domain=False))
    assert (t.domains == -1).all()
    assert any(len(set(store.class_domain[c])) > 1 for c in t.classes)


def test_manifest_roundtrip(tmp_path, setup):
    store, split = setup
    t = make_tasks(store, split.source, TaskConfig(n_way=3, M=12))
    write_manifest(tmp_path / "manifest.json", t, store, extra={"note": 1})
    back = read_manifest(tmp_path / "manifest.json", store)
    for name in ("classes", "support", "query", "domains", "ids"):
        assert np.array_equal(getattr(back, name), getattr(t, name))
    with pytest.raises(MtftError, match="another data store"):
        read_manifest(tmp_path / "manifest.json", make_store(seed=5))


def test_max_classes_limits_tasks_to_a_nested_seeded_subset(setup):
    store, split = setup
    used = {}
    for n in (4, 8, None):
        tasks = make_tasks(store, split.source, TaskConfig(n_way=3, M=200, within_domain=False, max_classes=n))
        used[n] = set(np.unique(tasks.classes).tolist())
    assert len(used[4]) == 4 and len(used[8]) == 8 and len(used[None]) > 8
    assert used[4] < used[8] < used[None]  # growing the limit only adds classes
    again = make_tasks(store, split.source, TaskConfig(n_way=3, M=200, within_domain=False, max_classes=4))
    assert set(np.unique(again.classes).tolist()) == used[4]
    with pytest.raises(MtftError, match="3-way tasks"):
        make_tasks(store, split.source, TaskConfig(n_way=3, M=1, max_classes=2))


def test_tasks_come_only_from_the_named_source_domains(setup):
    store, split = setup
    source = sorted({store.domain_names[d] for d in store.class_domain[split.source]})
    assert len(source) == 2
    one = make_tasks(store, split.source, TaskConfig(n_way=3, n_shot=1, n_query=2, M=30, domains=[source[1]]))
    assert {store.domain_names[d] for d in one.domains} == {source[1]}
    both = make_tasks(store, split.source, TaskConfig(n_way=3, n_shot=1, n_query=2, M=30, domains=source))
    assert {store.domain_names[d] for d in both.domains} == set(source)  # both drawn from
    held_out = sorted(set(store.domain_names) - set(source))
    with pytest.raises(MtftError, match=rf"tasks.domains: '{held_out[0]}' \(held out: a target or validation "
                                        rf"domain\) is not a source domain; source domains: {', '.join(source)}"):
        make_tasks(store, split.source, TaskConfig(n_way=3, M=5, domains=[source[0], held_out[0]]))
    with pytest.raises(MtftError, match=r"'nope' \(unknown\)"):
        make_tasks(store, split.source, TaskConfig(n_way=3, M=5, domains=["nope"]))
    with pytest.raises(ValueError, match="tasks.domains is empty"):
        TaskConfig(domains=[])
