"""Registry, cache, augmentation and tasks, on files the tests write."""
import json

import numpy as np
import pytest
import torch
from image_files import images, write_cifar_batch, write_class_tree, write_idx

from trajshift.core.errors import ConfigError
from trajshift.data import DataError
from trajshift.data.augment import normalize, random_crop, random_flip, to_float
from trajshift.data.cache import prepare
from trajshift.data.registry import load_dataset
from trajshift.data.tasks import ImageTask, TaskSpec, select_classes


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    mn = root / "mnist"
    mn.mkdir(parents=True)
    write_idx(mn / "t10k-images-idx3-ubyte.gz", images(50, 28))
    write_idx(mn / "t10k-labels-idx1-ubyte.gz", (np.arange(50) % 10).astype(np.uint8))
    c = root / "cifar-10-batches-py"
    c.mkdir()
    write_cifar_batch(c / "data_batch_1", n=20, classes=10)
    write_cifar_batch(c / "test_batch", n=10, classes=10)
    return root


def test_registry_by_name_and_by_path(data_root, tmp_path):
    d, spec, files = load_dataset("mnist", data_root)
    assert spec.name == "mnist" and set(d.splits) == {"test"} and len(files) == 2
    d, spec, _ = load_dataset("cifar10", data_root)
    assert d.splits["train"].images.shape == (20, 32, 32, 3)
    folder = write_class_tree(tmp_path / "mine", per_class=2)
    d, spec, _ = load_dataset(str(folder))
    assert spec is None and d.classes == ["cat", "dog"]


def test_registry_errors_say_what_to_place_where(tmp_path):
    with pytest.raises(DataError, match=r"dataset 'cifar100': no data found \(looked for the folders "
                                        r"cifar-100-python, cifar100 in .*\); run `trajshift download cifar100` "
                                        r"\(fetches cifar-100-python.tar.gz into .*\), or place the python pickles "
                                        r"train, test and meta in .*cifar-100-python") as err:
        load_dataset("cifar100", tmp_path)
    assert "\n" not in str(err.value)
    missing = tmp_path / "nothing-here"
    with pytest.raises(DataError, match=r"looked for the folders .* in nowhere \(no data folder exists yet\)"):
        load_dataset("cifar100", missing)
    with pytest.raises(DataError, match=r"dataset 'imagenet-21k': neither a registered dataset \(aircraft, "):
        load_dataset("imagenet-21k", tmp_path)


def test_class_count_mismatch_names_the_files(tmp_path):
    mn = tmp_path / "mnist"
    mn.mkdir()
    write_idx(mn / "t10k-images-idx3-ubyte.gz", images(12, 28))
    write_idx(mn / "t10k-labels-idx1-ubyte.gz", (np.arange(12) % 12).astype(np.uint8))
    with pytest.raises(DataError, match=r"mnist: 12 classes found, this dataset has 10"):
        load_dataset("mnist", tmp_path)


def test_cache_is_reused_and_a_damaged_cache_is_rebuilt(data_root, tmp_path):
    cache = tmp_path / "cache"
    a = prepare("mnist", 16, data_root, cache)
    assert a.train.images.shape[1:] == (16, 16, 1) and len(a.train.labels) + len(a.test.labels) == 50
    # Stratified 80/20 split of the only split: 5 per class -> 4 train, 1 test.
    assert np.bincount(a.test.labels).tolist() == [1] * 10
    folder = a.path
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["train"] == 40 and len(meta["mean"]) == 1
    b = prepare("mnist", 16, data_root, cache)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    # A run killed while writing: an array file cut short.
    p = folder / "train_x.npy"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.warns(UserWarning, match="incomplete or altered cache"):
        c = prepare("mnist", 16, data_root, cache)
    np.testing.assert_array_equal(a.train.images, c.train.images)
    (folder / "meta.json").unlink()
    with pytest.warns(UserWarning, match="incomplete or altered cache"):
        prepare("mnist", 16, data_root, cache)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]     # no temporary folder left behind


def test_resizing_keeps_a_constant_image_constant(data_root, tmp_path):
    folder = write_class_tree(tmp_path / "flat", per_class=2, size=10)
    p = prepare(str(folder), 4, cache_dir=tmp_path / "c")
    assert p.train.images.shape[1:] == (4, 4, 3)
    for img in np.concatenate([p.train.images, p.test.images]):
        assert len(np.unique(img)) == 1


def test_augmentation_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    assert torch.equal(random_crop(x, 0, g), x)
    y = random_crop(x, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):       # every crop is a 5x5 window of the zero-padded image
        assert any(torch.equal(y[b], padded[b, :, i:i + 5, j:j + 5]) for i in range(5) for j in range(5))
    f = random_flip(x, torch.Generator().manual_seed(1))
    for b in range(2):
        assert torch.equal(f[b], x[b]) or torch.equal(f[b], x[b].flip(-1))
    u8 = torch.full((1, 2, 2, 1), 255, dtype=torch.uint8)
    t = to_float(u8)
    assert t.shape == (1, 3, 2, 2) and torch.all(t == 1.0)
    assert torch.allclose(normalize(t, [0.5], [0.25]), torch.full_like(t, 2.0))


def test_class_selection():
    classes = [f"c{i}" for i in range(6)]
    assert select_classes(classes, "0:3", "t") == [0, 1, 2] and select_classes(classes, "3:", "t") == [3, 4, 5]
    assert select_classes(classes, ["c5", "c1"], "t") == [5, 1]
    with pytest.raises(ConfigError, match=r"t.classes: 'c9' is not a class of this dataset"):
        select_classes(classes, ["c9", "c1"], "t")
    with pytest.raises(ConfigError, match=r"selects 1 class"):
        select_classes(classes, "0:1", "t")


def test_task_subsample_split_and_deterministic_batches(data_root, tmp_path):
    data = prepare("cifar10", 32, data_root, tmp_path / "c")
    spec = TaskSpec.from_dict({"dataset": "cifar10", "classes": "0:2", "train_images": 4, "val_fraction": 0.5}, "t")
    task = ImageTask(spec, data, batch_size=4, seed=0, task_id=0)
    assert task.num_classes == 2 and len(task.y["train"]) == 2 and len(task.y["val"]) == 2
    assert set(task.y["test"].tolist()) <= {0, 1}
    x1, y1 = task.batch(5)
    x2, y2 = task.batch(5)
    assert x1.shape == (4, 3, 32, 32) and torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(ConfigError, match=r"t.train_images: 999 asked, the training split of cifar10 has"):
        ImageTask(TaskSpec.from_dict({"dataset": "cifar10", "train_images": 999}, "t"), data, 4, 0, 0, where="t")
    with pytest.raises(ConfigError, match=r"t.colour: unknown key"):
        TaskSpec.from_dict({"dataset": "cifar10", "colour": 1}, "t")
