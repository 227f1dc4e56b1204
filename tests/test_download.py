"""Downloads through file:// addresses (no network needed): sha256 checked, atomic, archives extracted safely."""
import hashlib
import io
import tarfile

import pytest

from trajshift.data import DataError, registry
from trajshift.data.download import download
from trajshift.data.registry import DatasetSpec


@pytest.fixture
def fake_spec(tmp_path, monkeypatch):
    src = tmp_path / "upstream"
    src.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        data = b"hello"
        info = tarfile.TarInfo("fake-folder/file.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    (src / "fake.tar.gz").write_bytes(buf.getvalue())
    digest = hashlib.sha256(buf.getvalue()).hexdigest()

    def make(sha):
        spec = DatasetSpec("fake", ("fake-folder",), None, "fake.tar.gz", 2, 1, 8,
                           ((f"file://{src / 'fake.tar.gz'}", sha),))
        monkeypatch.setattr(registry.DATASETS, "_entries", {**registry.DATASETS._entries, "fake": spec})
        return spec
    return make, digest


def test_download_verifies_and_extracts(tmp_path, fake_spec):
    make, digest = fake_spec
    make(digest)
    root = tmp_path / "data"
    folder = download("fake", root, log=lambda *_: None)
    assert (folder / "fake.tar.gz").exists() and (root / "fake-folder" / "file.txt").read_bytes() == b"hello"
    assert not list(folder.glob("*.part"))


def test_checksum_mismatch_writes_nothing(tmp_path, fake_spec):
    make, _ = fake_spec
    make("0" * 64)
    with pytest.raises(DataError, match="sha256 mismatch"):
        download("fake", tmp_path / "data", log=lambda *_: None)
    assert not (tmp_path / "data").exists()             # a failed download leaves no (empty) folder behind


def test_no_network_says_where_to_place_the_file(tmp_path, monkeypatch):
    spec = DatasetSpec("fake2", ("f2",), None, "x", 2, 1, 8, (("http://127.0.0.1:9/x.bin", None),))
    monkeypatch.setattr(registry.DATASETS, "_entries", {**registry.DATASETS._entries, "fake2": spec})
    with pytest.raises(DataError, match=r"cannot download http://127.0.0.1:9/x.bin .*place the file at .*f2/x.bin"):
        download("fake2", tmp_path, log=lambda *_: None)
    assert not (tmp_path / "f2").exists()
