"""The readers of published few-shot datasets (domainnet, miniimagenet, tieredimagenet, metadataset)
on miniatures laid out as published (tests/data/miniatures.py): domains and classes as the
datasets split them, the published split sizes, file sources' build equal to list_files + decode,
resizing, and one clear error line for a missing or inconsistent file."""

from __future__ import annotations

import collections
import os
import pickle
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image
from miniatures import (MINI_CLASSES, SIZE, TIERED_CLASSES, py2_pickle, write_domainnet, write_metadataset,
                        write_mini_csv, write_mini_pkl, write_tiered)

from mtft_ray.config import load_config
from mtft_ray.config.sources import DomainNetOptions, MetaDatasetOptions, MiniImageNetOptions, TieredImageNetOptions
from mtft_ray.data.sources import get_source, is_file_source
from mtft_ray.data.sources import metadataset as metadataset_module
from mtft_ray.data.sources import tieredimagenet as tiered_module
from mtft_ray.data.sources.miniimagenet import SPLITS
from mtft_ray.data.splits import split_classes
from mtft_ray.data.store import SampleStore, build_store
from mtft_ray.errors import MtftError


def per_domain(store: SampleStore) -> dict[str, int]:
    """Number of classes in each domain."""
    return {store.domain_names[d]: int(n) for d, n in enumerate(np.bincount(store.class_domain))}


def samples_per_domain(store: SampleStore) -> dict[str, int]:
    return {store.domain_names[d]: int(n) for d, n in enumerate(np.bincount(store.domains))}


def assert_build_is_list_and_decode(name: str, options, size: int) -> SampleStore:
    """``build`` gives the store that decoding ``list_files`` in order gives (what ``data prepare`` does)."""
    source = get_source(name)
    assert is_file_source(source)
    store = source.build(options, size, 0)
    listing = source.list_files(options)
    decoded = build_store([source.decode(f, size, options) for *_, f in listing], [(d, c) for d, c, _ in listing],
                          {"source": name})
    assert decoded.images.shape == (len(listing), size, size, 3)
    assert np.array_equal(decoded.images, store.images)
    assert decoded.class_names == store.class_names and np.array_equal(decoded.labels, store.labels)
    root = str(options.root) + "/"
    assert all(f.startswith(root) for *_, f in listing)
    assert [f[len(root):] for *_, f in listing] == store.files  # as a prepared store records them
    return store


def one_error(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# domainnet

def test_domainnet_reads_the_listed_images_by_domain(tmp_path):
    written = write_domainnet(tmp_path)
    store = get_source("domainnet").build(DomainNetOptions(root=str(tmp_path), workers=2), SIZE, 0)
    assert store.domain_names == ["clipart", "sketch"]
    assert store.class_names == ["clipart/aircraft_carrier", "clipart/zebra", "sketch/The_Eiffel_Tower",
                                 "sketch/aircraft_carrier"]
    assert samples_per_domain(store) == {"clipart": 6, "sketch": 6}  # 2 train + 1 test per class
    assert sorted(store.files) == sorted(written)  # the unlisted file on disk is not read
    assert store.meta["source"] == "domainnet" and store.meta["root"] == str(tmp_path.resolve())
    i = store.files.index(next(iter(written)))
    assert np.array_equal(store.images[i], np.asarray(Image.open(tmp_path / store.files[i]).convert("RGB")))
    train = get_source("domainnet").build(DomainNetOptions(root=str(tmp_path), images="train"), SIZE, 0)
    test = get_source("domainnet").build(DomainNetOptions(root=str(tmp_path), images="test",
                                                          domains=["sketch"]), SIZE, 0)
    assert samples_per_domain(train) == {"clipart": 4, "sketch": 4}
    assert samples_per_domain(test) == {"sketch": 2}
    assert set(train.files) | set(get_source("domainnet").build(
        DomainNetOptions(root=str(tmp_path), images="test"), SIZE, 0).files) == set(store.files)


def test_domainnet_build_is_list_files_and_decode_at_any_size(tmp_path):
    write_domainnet(tmp_path)
    for size, cap in ((SIZE, None), (20, 2)):
        store = assert_build_is_list_and_decode("domainnet", DomainNetOptions(root=str(tmp_path), max_per_class=cap),
                                                size)
        assert store.image_shape == (size, size, 3)
        assert np.bincount(store.labels).tolist() == [cap or 3] * 4


def test_domainnet_fingerprint_follows_the_files_not_the_workers(tmp_path):
    write_domainnet(tmp_path)
    src = get_source("domainnet")
    fp = src.fingerprint(DomainNetOptions(root=str(tmp_path)), SIZE, 0)
    assert src.fingerprint(DomainNetOptions(root=str(tmp_path), workers=1), SIZE, 0) == fp
    assert src.fingerprint(DomainNetOptions(root=str(tmp_path), images="train"), SIZE, 0) != fp
    os.utime(tmp_path / "clipart" / "zebra" / "clipart_003_000004.jpg", ns=(1, 1))  # on disk, not listed
    assert src.fingerprint(DomainNetOptions(root=str(tmp_path)), SIZE, 0) == fp
    listed = tmp_path / "clipart" / "zebra" / "clipart_003_000001.jpg"
    os.utime(listed, ns=(1, 1))
    assert src.fingerprint(DomainNetOptions(root=str(tmp_path)), SIZE, 0) != fp


def test_domainnet_missing_list_or_image_is_one_error(tmp_path):
    write_domainnet(tmp_path)
    src = get_source("domainnet")
    (tmp_path / "clipart_test.txt").unlink()
    with pytest.raises(MtftError) as e:
        src.build(DomainNetOptions(root=str(tmp_path)), SIZE, 0)
    assert f"DomainNet split list missing: {tmp_path}/clipart_test.txt" in one_error(e)
    assert src.build(DomainNetOptions(root=str(tmp_path), images="train"), SIZE, 0).num_samples == 8
    gone = tmp_path / "sketch" / "aircraft_carrier" / "sketch_002_000002.jpg"
    gone.unlink()
    with pytest.raises(MtftError) as e:
        src.list_files(DomainNetOptions(root=str(tmp_path), images="train"))
    assert one_error(e) == f"image listed in {tmp_path}/sketch_train.txt not found: {gone}"
    (tmp_path / "sketch_train.txt").write_text("sketch/aircraft_carrier/sketch_002_000001.jpg\n")
    with pytest.raises(MtftError, match=r"sketch_train.txt:1: expected 'sketch/<class>/<file> <label>'"):
        src.list_files(DomainNetOptions(root=str(tmp_path), images="train"))
    with pytest.raises(MtftError, match="needs data.options.root"):
        src.list_files(DomainNetOptions())


# miniimagenet

@pytest.mark.parametrize("fmt", ["csv", "pkl"])
def test_miniimagenet_has_the_published_split_sizes(tmp_path, fmt):
    written = write_mini_csv(tmp_path) if fmt == "csv" else write_mini_pkl(tmp_path)
    store = get_source("miniimagenet").build(MiniImageNetOptions(root=str(tmp_path)), SIZE, 0)
    assert per_domain(store) == {"test": 20, "train": 64, "val": 16} == dict(sorted(MINI_CLASSES.items()))
    assert store.meta["format"] == fmt and store.num_samples == 100
    if fmt == "csv":
        assert sorted(store.class_names) == sorted(f"{s}/{w}" for s, ws in written.items() for w in ws)
        assert all(f.startswith("images/n") and f.endswith(".jpg") for f in store.files)
    else:  # the pickled pixels, exactly
        i = store.files.index("mini-imagenet-cache-val.pkl#3")
        assert np.array_equal(store.images[i], written["val"][3])
        assert store.class_names[store.labels[i]].startswith("val/n")


@pytest.mark.parametrize("fmt", ["csv", "pkl"])
def test_miniimagenet_build_is_list_files_and_decode(tmp_path, fmt):
    small = {"train": 3, "val": 2, "test": 2}
    write_mini_csv(tmp_path, small, per_class=2) if fmt == "csv" else write_mini_pkl(tmp_path, small, per_class=2)
    for size, cap in ((SIZE, None), (16, 1)):
        store = assert_build_is_list_and_decode("miniimagenet", MiniImageNetOptions(root=str(tmp_path), format=fmt,
                                                                                    max_per_class=cap), size)
        assert store.image_shape == (size, size, 3) and store.num_samples == 7 * (cap or 2)


def test_miniimagenet_layout_is_found_or_named(tmp_path):
    src = get_source("miniimagenet")
    write_mini_pkl(tmp_path / "both", {"train": 1, "val": 1, "test": 1})
    write_mini_csv(tmp_path / "both", {"train": 1, "val": 1, "test": 1})
    opts = MiniImageNetOptions(root=str(tmp_path / "both"))
    assert src.build(opts, SIZE, 0).meta["format"] == "csv"  # auto: the csv layout first
    assert src.fingerprint(opts, SIZE, 0) == src.fingerprint(opts.model_copy(update={"format": "csv"}), SIZE, 0)
    assert src.fingerprint(opts, SIZE, 0) != src.fingerprint(opts.model_copy(update={"format": "pkl"}), SIZE, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MtftError, match="no miniImageNet in .*empty: expected train.csv, val.csv, test.csv"):
        src.build(MiniImageNetOptions(root=str(tmp_path / "empty")), SIZE, 0)


def test_miniimagenet_missing_or_bad_files_are_one_error(tmp_path):
    src = get_source("miniimagenet")
    write_mini_csv(tmp_path, {"train": 2, "val": 1, "test": 1})
    (tmp_path / "test.csv").unlink()
    with pytest.raises(MtftError) as e:
        src.list_files(MiniImageNetOptions(root=str(tmp_path)))
    assert one_error(e).startswith(f"miniImageNet split file missing: {tmp_path}/test.csv")
    (tmp_path / "test.csv").write_text("filename,label\nn0000000100000001.jpg,n00000001\n")
    with pytest.raises(MtftError) as e:
        src.build(MiniImageNetOptions(root=str(tmp_path)), SIZE, 0)
    assert one_error(e) == f"image listed in {tmp_path}/test.csv not found: {tmp_path}/images/n0000000100000001.jpg"
    (tmp_path / "test.csv").write_text("file,wnid\n")
    with pytest.raises(MtftError, match="test.csv: expected the header 'filename,label', got 'file,wnid'"):
        src.build(MiniImageNetOptions(root=str(tmp_path)), SIZE, 0)
    write_mini_pkl(tmp_path / "p", {"train": 1, "val": 1, "test": 1})
    (tmp_path / "p" / "mini-imagenet-cache-val.pkl").unlink()
    with pytest.raises(MtftError) as e:
        src.build(MiniImageNetOptions(root=str(tmp_path / "p")), SIZE, 0)
    assert f"miniImageNet split file missing: {tmp_path}/p/mini-imagenet-cache-val.pkl" in one_error(e)


def test_pickles_that_build_anything_but_arrays_are_refused(tmp_path):
    write_mini_pkl(tmp_path, {"train": 1, "val": 1, "test": 1})

    class Boom:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    with open(tmp_path / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump({"image_data": Boom(), "class_dict": {}}, f)
    with pytest.raises(MtftError) as e:
        get_source("miniimagenet").build(MiniImageNetOptions(root=str(tmp_path)), SIZE, 0)
    assert one_error(e) == (f"unreadable pickle {tmp_path}/mini-imagenet-cache-test.pkl: it asks for posix.mkdir; "
                            f"only numpy arrays and plain containers are read")
    assert not (tmp_path / "pwned").exists()


def test_a_miniimagenet_config_splits_by_the_published_classes(tmp_path):
    write_mini_pkl(tmp_path / "mini")
    cfg_path = tmp_path / "mini.yaml"
    cfg_path.write_text(yaml.safe_dump({"data": {
        "source": "miniimagenet", "options": {"root": str(tmp_path / "mini")}, "image_size": 16,
        "split": {"by": "domain", "target_domains": ["test"], "val_domains": ["val"]}}}))
    cfg = load_config(cfg_path)
    store = get_source(cfg.data.source).build(cfg.data.source_options(), cfg.data.image_size, 0)
    assert store.image_shape == (16, 16, 3)
    split = split_classes(store, cfg.data.split)
    assert (len(split.source), len(split.val), len(split.target)) == (64, 16, 20)
    assert {store.class_names[c].split("/")[0] for c in split.target} == {"test"}
    assert split.to_json(store)["source"] == {"domains": ["train"], "n_classes": 64}
    with pytest.raises(MtftError, match="format"):
        load_config(cfg_path, ["data.options.format=zip"])


# tieredimagenet

def test_tieredimagenet_has_the_published_split_sizes(tmp_path):
    written = write_tiered(tmp_path)
    store = get_source("tieredimagenet").build(TieredImageNetOptions(root=str(tmp_path), workers=2), SIZE, 0)
    assert per_domain(store) == {"test": 160, "train": 351, "val": 97} == dict(sorted(TIERED_CLASSES.items()))
    imgs, specific, names = written["val"]
    i = store.files.index("val_images_png.pkl#5")  # PNG: exact pixels
    assert np.array_equal(store.images[i], imgs[5])
    assert store.class_names[store.labels[i]] == f"val/{names[specific[5]]}"
    assert len(store.meta["general"]) == 608 and store.meta["source"] == "tieredimagenet"


@pytest.mark.parametrize("as_", ["bytes", "objarray"])
def test_tieredimagenet_reads_each_pickled_form_and_resizes(tmp_path, as_):
    written = write_tiered(tmp_path, {"train": 3, "val": 2, "test": 2}, per_class=3, as_=as_)
    src = get_source("tieredimagenet")
    store = src.build(TieredImageNetOptions(root=str(tmp_path)), SIZE, 0)
    imgs, specific, names = written["train"]
    for r in range(len(imgs)):
        i = store.files.index(f"train_images_png.pkl#{r}")
        assert np.array_equal(store.images[i], imgs[r])
        assert store.class_names[store.labels[i]] == f"train/{names[specific[r]]}"
    capped = src.build(TieredImageNetOptions(root=str(tmp_path), max_per_class=2), 20, 0)
    assert capped.image_shape == (20, 20, 3) and np.bincount(capped.labels).tolist() == [2] * 7
    first = [r for r in range(len(specific)) if specific[r] == specific[0]][:2]  # a class's first rows in file order
    assert {f"train_images_png.pkl#{r}" for r in first} <= set(capped.files)


def test_tieredimagenet_inconsistent_files_are_one_error(tmp_path):
    write_tiered(tmp_path, {"train": 2, "val": 1, "test": 1}, per_class=2)
    src = get_source("tieredimagenet")
    with open(tmp_path / "val_images_png.pkl", "rb") as f:
        pngs = pickle.load(f, encoding="latin1")  # a Python 2 pickle, as published
    py2_pickle(pngs[:1], tmp_path / "val_images_png.pkl")
    with pytest.raises(MtftError) as e:
        src.build(TieredImageNetOptions(root=str(tmp_path)), SIZE, 0)
    assert one_error(e) == f"{tmp_path}/val_images_png.pkl holds 1 images but {tmp_path}/val_labels.pkl labels 2"
    (tmp_path / "test_labels.pkl").unlink()
    with pytest.raises(MtftError) as e:
        src.fingerprint(TieredImageNetOptions(root=str(tmp_path)), SIZE, 0)
    assert one_error(e).startswith(f"tieredImageNet file missing: {tmp_path}/test_labels.pkl")


def test_tieredimagenet_build_is_list_files_and_decode(tmp_path, monkeypatch):
    write_tiered(tmp_path, {"train": 3, "val": 2, "test": 2}, per_class=2)
    for size, cap in ((SIZE, None), (16, 1)):
        store = assert_build_is_list_and_decode("tieredimagenet", TieredImageNetOptions(root=str(tmp_path),
                                                                                        max_per_class=cap), size)
        assert store.image_shape == (size, size, 3) and store.num_samples == 7 * (cap or 2)
    src, opts = get_source("tieredimagenet"), TieredImageNetOptions(root=str(tmp_path))
    loads = collections.Counter()
    real = tiered_module._load_pickle
    monkeypatch.setattr(tiered_module, "_load_pickle", lambda p: loads.update([p.name]) or real(p))
    tiered_module._cached.clear()
    for *_, f in src.list_files(opts):  # as a shard task walks its files: each split's pickle read once
        src.decode(f, SIZE, opts)
    assert {n: c for n, c in loads.items() if "images" in n} == {f"{s}_images_png.pkl": 1 for s in SPLITS}
    assert len(tiered_module._cached) == 1


def test_tieredimagenet_image_count_is_checked_when_a_listed_row_is_decoded(tmp_path):
    write_tiered(tmp_path, {"train": 2, "val": 1, "test": 1}, per_class=2)
    src, opts = get_source("tieredimagenet"), TieredImageNetOptions(root=str(tmp_path))
    with open(tmp_path / "val_images_png.pkl", "rb") as f:
        pngs = pickle.load(f, encoding="latin1")
    py2_pickle(pngs[:1], tmp_path / "val_images_png.pkl")
    listing = src.list_files(opts)  # only the labels are read here
    assert f"{tmp_path}/val_images_png.pkl#1" in [f for *_, f in listing]
    with pytest.raises(MtftError) as e:
        src.decode(f"{tmp_path}/val_images_png.pkl#0", SIZE, opts)
    assert one_error(e) == f"{tmp_path}/val_images_png.pkl holds 1 images but {tmp_path}/val_labels.pkl labels 2"


# metadataset

def test_metadataset_reads_the_three_spec_kinds(tmp_path):
    written = write_metadataset(tmp_path)
    store = get_source("metadataset").build(MetaDatasetOptions(root=str(tmp_path), workers=2), SIZE, 0)
    assert per_domain(store) == {"aircraft-test": 1, "aircraft-train": 2, "aircraft-val": 1,
                                 "ilsvrc_2012-test": 1, "ilsvrc_2012-train": 2, "ilsvrc_2012-val": 1,
                                 "omniglot-test": 1, "omniglot-train": 3, "omniglot-val": 2}
    assert {"aircraft-train/F-16A/B", "omniglot-val/Bengali-character02", "omniglot-test/Cyrillic-character01",
            "ilsvrc_2012-val/n02085620"} <= set(store.class_names)
    assert np.bincount(store.labels).tolist() == [2] * 14
    i = store.files.index("omniglot/3.tfrecords#1")  # grey PNG: exact pixels, as RGB
    assert np.array_equal(store.images[i], np.repeat(written["omniglot"][3][1][..., None], 3, axis=2))
    assert store.class_names[store.labels[i]] == "omniglot-val/Bengali-character01"
    assert store.meta["sources"] == ["aircraft", "ilsvrc_2012", "omniglot"]
    one = get_source("metadataset").build(MetaDatasetOptions(root=str(tmp_path), sources=["omniglot"],
                                                             max_per_class=1), 20, 0)
    assert one.image_shape == (20, 20, 3) and one.num_samples == 6
    assert all(f.startswith("omniglot/") and f.endswith("#0") for f in one.files)


def test_a_metadataset_split_holds_out_a_source_split(tmp_path):
    write_metadataset(tmp_path)
    cfg = load_config(None, ["data.source=metadataset", f"data.options.root={tmp_path}",
                             "data.options.sources=[omniglot]", "data.split.target_domains=[omniglot-test]",
                             "data.split.val_domains=[omniglot-val]"])
    store = get_source("metadataset").build(cfg.data.source_options(), 16, 0)
    split = split_classes(store, cfg.data.split)
    assert (len(split.source), len(split.val), len(split.target)) == (3, 2, 1)


def test_metadataset_count_mismatch_and_missing_files_are_one_error(tmp_path):
    write_metadataset(tmp_path)
    src = get_source("metadataset")
    shutil.copy(tmp_path / "aircraft" / "0.tfrecords", tmp_path / "aircraft" / "1.tfrecords")
    with pytest.raises(MtftError) as e:
        src.build(MetaDatasetOptions(root=str(tmp_path), sources=["aircraft"]), SIZE, 0)
    assert one_error(e) == f"{tmp_path}/aircraft/1.tfrecords: record 0 has label 0, expected the class id 1"
    data = (tmp_path / "omniglot" / "2.tfrecords").read_bytes()
    (tmp_path / "omniglot" / "2.tfrecords").write_bytes(data + data)  # 4 records, the spec says 2
    with pytest.raises(MtftError) as e:
        src.build(MetaDatasetOptions(root=str(tmp_path), sources=["omniglot"]), SIZE, 0)
    assert one_error(e) == (f"{tmp_path}/omniglot/2.tfrecords holds 4 records, but "
                            f"{tmp_path}/omniglot/dataset_spec.json says images_per_class[2] = 2")
    (tmp_path / "omniglot" / "2.tfrecords").write_bytes(data[:-7])
    with pytest.raises(MtftError, match=f"unreadable TFRecord file {tmp_path}/omniglot/2.tfrecords at record 1"):
        src.build(MetaDatasetOptions(root=str(tmp_path), sources=["omniglot"]), SIZE, 0)
    (tmp_path / "ilsvrc_2012" / "3.tfrecords").unlink()
    with pytest.raises(MtftError) as e:
        src.fingerprint(MetaDatasetOptions(root=str(tmp_path), sources=["ilsvrc_2012"]), SIZE, 0)
    assert one_error(e).startswith(f"Meta-Dataset class file missing: {tmp_path}/ilsvrc_2012/3.tfrecords")
    (tmp_path / "aircraft" / "dataset_spec.json").rename(tmp_path / "aircraft" / "dataset_spec.pkl")
    with pytest.raises(MtftError, match=r"spec missing: .*aircraft/dataset_spec.json \(only the older dataset_spec"):
        src.build(MetaDatasetOptions(root=str(tmp_path), sources=["aircraft"]), SIZE, 0)


def test_metadataset_build_is_list_files_and_decode(tmp_path, monkeypatch):
    write_metadataset(tmp_path)
    for size, cap, sources in ((SIZE, None, None), (16, 1, ["omniglot", "aircraft"])):
        opts = MetaDatasetOptions(root=str(tmp_path), max_per_class=cap, sources=sources)
        store = assert_build_is_list_and_decode("metadataset", opts, size)
        assert store.image_shape == (size, size, 3)
        assert store.num_samples == (14 if sources is None else 10) * (cap or 2)
    src, opts = get_source("metadataset"), MetaDatasetOptions(root=str(tmp_path))
    reads = collections.Counter()
    real = metadataset_module.tfrecord_loader
    monkeypatch.setattr(metadataset_module, "tfrecord_loader", lambda p, *a: reads.update([p]) or real(p, *a))
    metadataset_module._cached.clear()
    listing = src.list_files(opts)
    assert not reads  # counted from the specs
    for *_, f in listing:  # as a shard task walks its files: each class file read once
        src.decode(f, SIZE, opts)
    assert sorted(reads) == sorted({f.rpartition("#")[0] for *_, f in listing}) and set(reads.values()) == {1}
    assert len(metadataset_module._cached) == 1


def test_metadataset_records_are_checked_when_a_listed_record_is_decoded(tmp_path):
    write_metadataset(tmp_path)
    src, opts = get_source("metadataset"), MetaDatasetOptions(root=str(tmp_path), sources=["omniglot"])
    data = (tmp_path / "omniglot" / "2.tfrecords").read_bytes()
    (tmp_path / "omniglot" / "2.tfrecords").write_bytes(data + data)  # 4 records, the spec says 2
    listing = [f for *_, f in src.list_files(opts)]
    assert f"{tmp_path}/omniglot/2.tfrecords#1" in listing  # as many as the spec says
    assert f"{tmp_path}/omniglot/2.tfrecords#2" not in listing
    with pytest.raises(MtftError) as e:
        src.decode(f"{tmp_path}/omniglot/2.tfrecords#1", SIZE, opts)
    assert one_error(e) == (f"{tmp_path}/omniglot/2.tfrecords holds 4 records, but "
                            f"{tmp_path}/omniglot/dataset_spec.json says images_per_class[2] = 2")
    shutil.copy(tmp_path / "omniglot" / "0.tfrecords", tmp_path / "omniglot" / "1.tfrecords")
    with pytest.raises(MtftError) as e:
        src.decode(f"{tmp_path}/omniglot/1.tfrecords#0", SIZE, opts)
    assert one_error(e) == f"{tmp_path}/omniglot/1.tfrecords: record 0 has label 0, expected the class id 1"


def test_every_reader_names_its_source_and_root(tmp_path):
    write_domainnet(tmp_path / "d", {"real": ["cat"]}, train=1, test=0)
    write_mini_pkl(tmp_path / "m", {"train": 1, "val": 1, "test": 1})
    write_tiered(tmp_path / "t", {"train": 1, "val": 1, "test": 1})
    write_metadataset(tmp_path / "md", per_class=1)
    counts = collections.Counter()
    for name, sub, opts in (("domainnet", "d", DomainNetOptions), ("miniimagenet", "m", MiniImageNetOptions),
                            ("tieredimagenet", "t", TieredImageNetOptions), ("metadataset", "md", MetaDatasetOptions)):
        store = get_source(name).build(opts(root=str(tmp_path / sub)), SIZE, 0)
        assert store.meta["source"] == name and store.meta["root"] == str((tmp_path / sub).resolve())
        assert len(store.files) == store.num_samples
        counts[name] = store.num_samples
    assert counts == {"domainnet": 1, "miniimagenet": 3, "tieredimagenet": 3, "metadataset": 14}


def test_a_prepared_store_records_what_build_does(tmp_path):
    """data prepare writes a FileSource's store_meta: the published split, tiered's categories."""
    write_tiered(tmp_path, {"train": 3, "val": 2, "test": 2}, per_class=2)
    source = get_source("tieredimagenet")
    options = source.Options(root=str(tmp_path))
    built = source.build(options, 12, 0)
    extra = source.store_meta(options)
    assert extra["general"] == built.meta["general"] and len(extra["general"]) == 7
    assert extra["split"] == built.meta["split"] == {"by": "domain", "target_domains": ["test"], "val_domains": ["val"]}
