import numpy as np
import pytest

from mtft_ray.config.schema import SplitConfig
from mtft_ray.data.splits import split_classes
from mtft_ray.errors import MtftError
from tests.conftest import make_store


def test_store_fingerprint_tells_contents_apart(small_store):
    assert make_store(seed=0).fingerprint() == small_store.fingerprint()
    assert make_store(seed=1).fingerprint() != small_store.fingerprint()


def test_samples_by_class(small_store):
    groups = small_store.samples_by_class()
    assert len(groups) == small_store.num_classes
    for c, ids in enumerate(groups):
        assert len(ids) == 10 and (small_store.labels[ids] == c).all()


def test_domain_split_is_disjoint_and_deterministic(small_store):
    cfg = SplitConfig(by="domain", target_domains=1, val_domains=1, seed=3)
    a, b = split_classes(small_store, cfg), split_classes(small_store, cfg)
    assert np.array_equal(a.target, b.target) and np.array_equal(a.val, b.val)
    assert not set(a.source) & set(a.target) and not set(a.val) & set(a.target) and not set(a.source) & set(a.val)
    assert len(a.source) + len(a.val) + len(a.target) == small_store.num_classes
    # whole domains are held out
    for part in (a.source, a.val, a.target):
        doms = set(small_store.class_domain[part])
        others = set(small_store.class_domain) - doms
        assert all(small_store.class_domain[c] not in others for c in part)
    assert len(set(small_store.class_domain[a.target])) == 1


def test_explicit_domains(small_store):
    s = split_classes(small_store, SplitConfig(target_domains=["d2"], val_domains=["d0"]))
    assert {small_store.domain_names[d] for d in small_store.class_domain[s.target]} == {"d2"}
    assert {small_store.domain_names[d] for d in small_store.class_domain[s.val]} == {"d0"}
    with pytest.raises(MtftError, match="unknown domain"):
        split_classes(small_store, SplitConfig(target_domains=["zz"], val_domains=0))
    with pytest.raises(MtftError, match="already in another split"):
        split_classes(small_store, SplitConfig(target_domains=["d1"], val_domains=["d1"]))
    with pytest.raises(MtftError, match="at least one must stay"):
        split_classes(small_store, SplitConfig(target_domains=3, val_domains=1))


def test_class_split_within_domains(small_store):
    s = split_classes(small_store, SplitConfig(by="class", target_fraction=0.5, val_fraction=0.2))
    assert not set(s.source) & set(s.target)
    # every domain contributes to both source and target
    assert set(small_store.class_domain[s.target]) == set(range(small_store.num_domains))
    assert set(small_store.class_domain[s.source]) == set(range(small_store.num_domains))
