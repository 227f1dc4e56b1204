"""Every reader on small files written in the real format, and their errors."""
import os
import pickle

import numpy as np
import pytest
from image_files import (
    images,
    png_bytes,
    tar_tree,
    write_cifar_batch,
    write_class_tree,
    write_idx,
    zip_tree,
)

from trajshift.data import DataError
from trajshift.data.formats import (
    read_cifar_batch,
    read_idx,
    read_idx_pair,
    read_image_tree,
    read_npy_classes,
    read_npz,
    read_tiny_imagenet,
    safe_unpickle,
)


def test_idx_plain_and_gzip(tmp_path):
    x = images(5, 4)
    for gz in (False, True):
        p = write_idx(tmp_path / f"x{gz}.idx", x, gz=gz)
        np.testing.assert_array_equal(read_idx(p), x)


def test_truncated_idx_gives_complete_images_with_a_warning(tmp_path):
    x = images(10, 4)
    p = write_idx(tmp_path / "cut", x, gz=False, cut=16 + 3 * 16 + 7)       # 3 whole images and 7 bytes
    with pytest.warns(UserWarning, match=r"cut: header says 10 records but the file holds only 3 complete"):
        np.testing.assert_array_equal(read_idx(p), x[:3])
    full = write_idx(tmp_path / "full.gz", images(200, 8, seed=3)).read_bytes()
    p = tmp_path / "cut.gz"
    p.write_bytes(full[:len(full) // 2])                                     # an interrupted download
    with pytest.warns(UserWarning, match=r"cut.gz: header says 200 records but the file holds only \d+ complete"):
        got = read_idx(p)
    assert 0 < len(got) < 200
    np.testing.assert_array_equal(got, images(200, 8, seed=3)[:len(got)])
    with pytest.raises(DataError, match=r"head: IDX header is cut short"):
        read_idx(write_idx(tmp_path / "head", x, gz=False, cut=10))


def test_idx_pair_and_errors(tmp_path):
    x, y = images(6, 4), np.arange(6, dtype=np.uint8) % 3
    s = read_idx_pair(write_idx(tmp_path / "i.gz", x), write_idx(tmp_path / "l.gz", y))
    assert s.images.shape == (6, 4, 4, 1) and s.labels.tolist() == [0, 1, 2, 0, 1, 2]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04junk")
    with pytest.raises(DataError, match=r"bad: not an IDX file"):
        read_idx(tmp_path / "bad")
    with pytest.raises(DataError, match=r"l2.gz: 2 labels for 6 images"):
        read_idx_pair(tmp_path / "i.gz", write_idx(tmp_path / "l2.gz", y[:2]))
    with pytest.raises(DataError, match=r"missing.gz: cannot read"):
        read_idx(tmp_path / "missing.gz")


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_batch_through_the_restricted_unpickler(tmp_path, protocol):
    batch = write_cifar_batch(tmp_path / "data_batch_1", protocol=protocol)
    s = read_cifar_batch(tmp_path / "data_batch_1")
    assert s.images.shape == (6, 32, 32, 3)
    # CIFAR rows are 1024 red, 1024 green, 1024 blue values in row-major order.
    np.testing.assert_array_equal(s.images[2, 5, 7], batch[b"data"][2, [5 * 32 + 7, 1024 + 5 * 32 + 7,
                                                                       2048 + 5 * 32 + 7]])
    assert s.labels.tolist() == [0, 1, 2, 0, 1, 2]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1: refusing to unpickle: the file asks to load posix.system"):
        read_cifar_batch(path)
    assert not marker.exists()
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="not a readable pickle"):
        safe_unpickle(path)


@pytest.mark.parametrize("packing", ["dir", "zip", "tar.gz", "tar.xz"])
def test_image_tree_with_split_folders(tmp_path, packing):
    root = write_class_tree(tmp_path / "ds", split_dirs=True)
    src = {"dir": lambda: root, "zip": lambda: zip_tree(root, tmp_path / "ds.zip", "top/"),
           "tar.gz": lambda: tar_tree(root, tmp_path / "ds.tar.gz"),
           "tar.xz": lambda: tar_tree(root, tmp_path / "ds.tar.xz", "w:xz", "top/")}[packing]()
    d = read_image_tree(src)
    assert d.classes == ["cat", "dog"] and set(d.splits) == {"train", "test"}
    tr = d.splits["train"]
    assert tr.images.shape == (6, 8, 8, 3) and sorted(tr.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert sorted(int(v) for v in tr.images[:, 0, 0, 0]) == [0, 1, 2, 40, 41, 42]


def test_csv_manifest_and_resize(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    for i in range(4):
        (root / f"img{i}.jpg").write_bytes(png_bytes(np.full((10, 12, 3), 60 * i, np.uint8), "JPEG"))
    (root / "manifest.csv").write_text("file,label,split\nimg0.jpg,b,train\nimg1.jpg,a,train\nimg2.jpg,b,test\n"
                                       "img3.jpg,a,test\n")
    d = read_image_tree(root, resolution=6)
    assert d.classes == ["a", "b"] and d.splits["train"].images.shape == (2, 6, 6, 3)
    assert d.splits["train"].labels.tolist() == [1, 0]
    (root / "manifest.csv").write_text("file,label\nimg0.jpg,b\nnope.jpg,a\n")
    with pytest.raises(DataError, match=r"manifest.csv: line 3: file 'nope.jpg' is not in"):
        read_image_tree(root)


def test_undecodable_image_is_named(tmp_path):
    root = write_class_tree(tmp_path / "ds")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"ds/dog/broken.png: cannot decode image"):
        read_image_tree(root)
    zipped = zip_tree(root, tmp_path / "ds.zip")
    with pytest.raises(DataError, match=r"ds.zip:dog/broken.png: cannot decode image"):
        read_image_tree(zipped)


def test_two_archives_sharing_files_are_deduplicated(tmp_path):
    write_class_tree(tmp_path / "a" / "Greek", classes=("character01", "character02"))
    write_class_tree(tmp_path / "b" / "Greek", classes=("character01",))
    write_class_tree(tmp_path / "b" / "Latin", classes=("character01",))
    za, zb = zip_tree(tmp_path / "a", tmp_path / "a.zip", "small1/"), zip_tree(tmp_path / "b", tmp_path / "b.zip",
                                                                                "small2/")
    d = read_image_tree([za, zb], mode="L", class_depth=2)
    assert d.classes == ["Greek/character01", "Greek/character02", "Latin/character01"]
    assert len(d.splits["all"].labels) == 9 and d.splits["all"].images.shape[-1] == 1


def test_npy_classes_and_npz(tmp_path):
    for name, n in (("apple", 4), ("cat", 3)):
        np.save(tmp_path / f"{name}.npy", images(n, 28).reshape(n, 1, 784))
    d = read_npy_classes(sorted(tmp_path.glob("*.npy")))
    assert d.classes == ["apple", "cat"] and d.splits["all"].images.shape == (7, 28, 28, 1)
    np.savez(tmp_path / "d.npz", x=images(5, 6), y=np.arange(5) % 2)
    assert read_npz(tmp_path / "d.npz").splits["all"].labels.tolist() == [0, 1, 0, 1, 0]
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="obj.npy: not a readable .npy file"):
        read_npy_classes([tmp_path / "obj.npy"])


def test_tiny_imagenet_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("n01\nn02\nn03\n")        # n03 has no image: dropped
    rows = []
    for i in range(4):
        (root / "val" / "images" / f"val_{i}.JPEG").write_bytes(png_bytes(np.full((64, 64, 3), i, np.uint8), "JPEG"))
        rows.append(f"val_{i}.JPEG\tn0{1 + i % 2}\t0\t0\t10\t10")
    rows.append("val_99.JPEG\tn01\t0\t0\t1\t1")               # listed, image absent: ignored
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    (root / "train" / "n02" / "images").mkdir(parents=True)
    (root / "train" / "n02" / "images" / "n02_0.JPEG").write_bytes(png_bytes(np.zeros((64, 64), np.uint8), "JPEG"))
    archive = tar_tree(tmp_path, tmp_path / "tin.tar.xz", "w:xz")
    for src in (root, archive):
        d = read_tiny_imagenet(src, resolution=32)
        assert d.classes == ["n01", "n02"]
        assert d.splits["val"].labels.tolist() == [0, 1, 0, 1] and d.splits["val"].images.shape == (4, 32, 32, 3)
        assert d.splits["train"].labels.tolist() == [1]
