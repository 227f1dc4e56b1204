"""No code runs from any file the library reads; malformed input raises the library's own errors (fuzzed)."""
import gzip
import os
import pickle
import warnings
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trajshift.core.errors import ConfigError, TrajshiftError
from trajshift.data.formats import (
    read_idx,
    read_image_tree,
    read_npz,
    read_tiny_imagenet,
    safe_unpickle,
)
from trajshift.evaluation.meta_test import load_init
from trajshift.runs.config import ExperimentConfig
from trajshift.training.checkpoint import load_latest, save_checkpoint
from trajshift.training.config import MetaConfig

# TRAJSHIFT_FUZZ_EXAMPLES=1000 for a deeper run (docs/RELIABILITY.md).
FUZZ = settings(max_examples=int(os.environ.get("TRAJSHIFT_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_and_the_previous_used(tmp_path):
    marker = tmp_path / "pwned"
    save_checkpoint(tmp_path, 1, {"x": torch.ones(1)})
    # A checkpoint-looking file whose pickle would run a command; its checksum is "valid" (an attacker can write
    # both files), so only weights_only loading stands between it and execution.
    evil = tmp_path / "ckpt-0000000002.pt"
    evil.write_bytes(pickle.dumps({"x": Payload(marker)}))
    import hashlib
    (tmp_path / "ckpt-0000000002.pt.sha256").write_text(hashlib.sha256(evil.read_bytes()).hexdigest())
    with pytest.warns(UserWarning, match="ckpt-0000000002.pt: skipping this checkpoint: (refused|not a readable "
                                         "state_dict)") as caught:
        _, path = load_latest(tmp_path)
    assert all("weights_only=False" not in str(w.message) for w in caught)      # never the unsafe advice
    assert path.name == "ckpt-0000000001.pt" and not marker.exists()


def test_malicious_initialization_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "init.pt"
    torch.save({"w": Payload(marker)}, evil)        # a torch file whose pickle would run a command
    with pytest.raises(TrajshiftError, match=r"init.pt: refused \(posix.system inside\): the file holds Python objects") as err:
        load_init(evil)
    assert not marker.exists()
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(TrajshiftError, match=r"junk.pt: not a readable state_dict file \(.*\); is it a torch.save"):
        load_init(tmp_path / "junk.pt")


def test_meta_params_must_be_lists_of_globs():
    base = {"model": {"name": "conv4"}, "tasks": [{"dataset": "digits"}], "meta": {"method": "cts"}}
    with pytest.raises(ConfigError, match=r"meta_params.include: expected a list, got 3"):
        ExperimentConfig.from_dict({**base, "meta_params": {"include": 3}})


def test_model_options_are_validated_before_any_work():
    base = {"tasks": [{"dataset": "digits"}], "meta": {"method": "cts"}}
    with pytest.raises(ConfigError, match=r"model.depth: not an option of conv4; allowed: activation, pooling, width"):
        ExperimentConfig.from_dict({**base, "model": {"name": "conv4", "depth": 3}})
    with pytest.raises(ConfigError, match=r"model: .* cannot be built"):
        ExperimentConfig.from_dict({**base, "model": {"name": "conv4", "width": "wide"}})


# ----- fuzzing: the readers -----------------------------------------------------------------------------------
@FUZZ
@given(st.binary(max_size=400), st.booleans())
def test_fuzz_idx(tmp_path, data, gz):
    p = tmp_path / "f.idx"
    p.write_bytes(gzip.compress(data) if gz else data)
    try:
        read_idx(p)
    except TrajshiftError:
        pass


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_idx_header_mutations(tmp_path, tail):
    header = b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (3).to_bytes(4, "big")
    p = tmp_path / "h.idx"
    p.write_bytes(header + tail)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            x = read_idx(p)
            assert x.shape[1:] == (3, 3)
        except TrajshiftError:
            pass
    assert all(str(p) in str(w.message) for w in caught), [str(w.message) for w in caught]   # ours, naming the file


@FUZZ
@given(st.one_of(st.binary(max_size=300),
                 st.builds(lambda o, proto: pickle.dumps(o, protocol=proto),
                           st.recursive(st.none() | st.booleans() | st.integers() | st.binary(max_size=8) |
                                        st.text(max_size=8), lambda c: st.lists(c, max_size=3) |
                                        st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=8),
                           st.integers(0, 5))))
def test_fuzz_unpickler(tmp_path, data):
    p = tmp_path / "batch"
    p.write_bytes(data)
    try:
        safe_unpickle(p)
    except TrajshiftError:
        pass


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["a/x.png", "b/y.png", "train/c/z.png", "manifest.csv", "t/u/v.jpg"]),
                          st.binary(max_size=120)), max_size=4))
def test_fuzz_image_archive(tmp_path, members):
    p = tmp_path / "d.zip"
    with zipfile.ZipFile(p, "w") as z:
        for name, data in members:
            z.writestr(name, data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            read_image_tree(p, resolution=8)
        except TrajshiftError:
            pass
    assert all(str(p) in str(w.message) for w in caught), [str(w.message) for w in caught]   # ours, naming the file


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_npz_and_tin(tmp_path, data):
    p = tmp_path / "x.npz"
    p.write_bytes(data)
    try:
        read_npz(p)
    except TrajshiftError:
        pass
    q = tmp_path / "tin.zip"
    with zipfile.ZipFile(q, "w") as z:
        z.writestr("tiny-imagenet-200/wnids.txt", data[:20])
        z.writestr("tiny-imagenet-200/val/val_annotations.txt", data[20:80])
        z.writestr("tiny-imagenet-200/val/images/val_0.JPEG", data[80:])
    try:
        read_tiny_imagenet(q)
    except TrajshiftError:
        pass


# ----- fuzzing: the config parsers ----------------------------------------------------------------------------
json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) |
                           st.text(max_size=6), lambda c: st.lists(c, max_size=3) |
                           st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=6)
meta_keys = st.sampled_from(["method", "inner_steps", "trajectories", "meta_lr", "inner_optimizer", "meta_optimizer",
                             "options", "seed", "dtype", "log_every", "clip_grad_norm", "reset_heads", "bogus"])


def _culprit(err: ConfigError, data: dict, required: tuple = ()) -> bool:
    """A refusal names the key at fault first (``key: ...``, ``key[...]``, ``key.sub: ...``) or a missing required
    key."""
    head = str(err).split(":", 1)[0]
    return any(head == str(k) or head.startswith((f"{k}[", f"{k}.")) for k in list(data) + list(required))


@FUZZ
@given(st.dictionaries(meta_keys, json_values | st.sampled_from(["cts", "sgd", {"name": "sgd"}, 3, 0.1]),
                       max_size=5))
def test_fuzz_meta_config(data):
    try:
        cfg = MetaConfig.from_dict(data)
    except ConfigError as err:
        assert _culprit(err, data), (data, str(err))
        return
    assert "bogus" not in data
    assert MetaConfig.from_dict(cfg.to_dict()) == cfg            # what was accepted reads back as itself


@FUZZ
@given(st.fixed_dictionaries({}, optional={
    "method": st.sampled_from(["cts", "reptile", "fomaml", "leap", "cts-no-shift", "mtl"]),
    "inner_steps": st.integers(1, 10_000), "trajectories": st.integers(1, 1000),
    "meta_lr": st.floats(0, 100, allow_nan=False), "seed": st.integers(0, 2 ** 31),
    "dtype": st.sampled_from(["float32", "float64"]), "log_every": st.integers(1, 100),
    "inner_optimizer": st.sampled_from([{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": 0.001},
                                        {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True}])}))
def test_fuzz_valid_meta_configs_are_accepted_as_given(data):
    cfg = MetaConfig.from_dict(data)                              # a parser that refuses everything fails here
    for key, value in data.items():
        got = getattr(cfg, key)
        assert got == value or (isinstance(value, dict) and {**got, **value} == got), (key, value, got)


@FUZZ
@given(st.dictionaries(st.sampled_from(["model", "tasks", "meta", "batch_size", "seed", "device", "snapshot_every",
                                        "meta_params", "checkpoint_every", "junk"]),
                       json_values | st.just({"name": "conv4"}) | st.just([{"dataset": "digits"}]) |
                       st.just({"method": "cts"}), max_size=6))
def test_fuzz_experiment_config(data):
    try:
        cfg = ExperimentConfig.from_dict(data)
    except ConfigError as err:
        assert _culprit(err, data, required=("model", "tasks", "meta")), (data, str(err))
        return
    assert "junk" not in data and {"model", "tasks", "meta"} <= set(data)
    assert ExperimentConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@FUZZ
@given(st.one_of(st.text(max_size=120),
                 st.lists(st.sampled_from(["model: conv4", "model: {name: resnet20, width: 3}", "tasks: []",
                                           "tasks: [{dataset: digits, resolution: 2017-01-01}]", "meta: {method: 1}",
                                           "meta: {method: cts, inner_steps: 1e3}", "seed: !!set {a}", "? [a]\n: 1",
                                           "batch_size: .inf", "meta_params: {include: 3}", "tasks: [3]", "- a",
                                           "meta: {method: cts, options: {1: 2}}", "device: quantum"]),
                          max_size=5).map("\n".join)))
def test_fuzz_yaml_config_files(tmp_path, text):
    from trajshift.runs.config import load_config
    p = tmp_path / "c.yaml"
    p.write_text(text)
    try:
        load_config(p)
    except ConfigError:
        pass


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_npy_classes(tmp_path, data):
    from trajshift.data.formats import read_npy_classes
    p = tmp_path / "cat.npy"
    p.write_bytes(data)
    try:
        read_npy_classes([p])
    except TrajshiftError:
        pass


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_fuzz_checkpoint_files(tmp_path, data, with_checksum):
    """Any bytes under a checkpoint's name: skipped with a warning, never an exception, never loaded unverified."""
    import hashlib
    import warnings
    folder = tmp_path / "ck"
    folder.mkdir(exist_ok=True)
    for p in folder.iterdir():
        p.unlink()
    (folder / "ckpt-0000000007.pt").write_bytes(data)
    if with_checksum:
        (folder / "ckpt-0000000007.pt.sha256").write_text(hashlib.sha256(data).hexdigest())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = load_latest(folder)
    assert found is None or with_checksum
