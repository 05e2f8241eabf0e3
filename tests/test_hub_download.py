"""Downloading a hub model (prunevid.hub.download) from a small fake hub on 127.0.0.1: byte progress, the cache,
an interrupt, and the errors. The ComfyUI loader's use of it is in test_nodes.py."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import huggingface_hub
import pytest

from fake_hub import FakeHub
from prunevid.hub import download
from prunevid.errors import ModelError

BIG = 24 * 2**20     # over huggingface_hub's 10 MiB read chunk, so a half-sent file shows up on disk


@pytest.fixture
def repo(tmp_path) -> Path:
    """A hub repo as from_pretrained sees it: config, a weights file, and a README that is not a model file."""
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    (folder / "model.safetensors").write_bytes(os.urandom(BIG))
    (folder / "README.md").write_text("not a model file")
    return folder


def model_bytes(hub) -> int:
    return sum(len(b) for n, b in hub.files.items() if n != "README.md")


def test_download_reports_the_bytes_of_a_file_in_progress(repo, tmp_path, monkeypatch):
    with FakeHub(repo, hold="model.safetensors") as hub:
        hub.use(monkeypatch, tmp_path / "cache")
        seen, small = [], len(hub.files["config.json"])

        def progress(done, total):
            seen.append((done, total))
            if small < done < total:          # part of the weights file is on disk: let the server finish
                hub.release.set()

        path = download(hub.repo_id, progress, poll_s=0.05)
        held_until_seen = any(small < d < t for d, t in seen)
    assert held_until_seen, f"no report while the weights file was half downloaded: {seen}"
    assert {t for _, t in seen} == {model_bytes(hub)}
    assert seen[-1] == (model_bytes(hub), model_bytes(hub))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]   # the README is not fetched
    assert (Path(path) / "model.safetensors").read_bytes() == hub.files["model.safetensors"]


def test_a_cached_model_is_not_fetched_again(repo, tmp_path, monkeypatch):
    with FakeHub(repo) as hub:
        hub.use(monkeypatch, tmp_path / "cache")
        first = download(hub.repo_id)
        hub.served.clear()
        seen = []
        again = download(hub.repo_id, lambda d, t: seen.append((d, t)))
    assert again == first and seen == [(model_bytes(hub), model_bytes(hub))]
    assert not [p for _, p in hub.served if "/resolve/" in p], hub.served


class Interrupted(BaseException):
    """Like ComfyUI's InterruptProcessingException: a BaseException raised by the progress callback."""


def test_an_interrupt_stops_the_download(repo, tmp_path, monkeypatch):
    with FakeHub(repo, hold="model.safetensors") as hub:
        hub.use(monkeypatch, tmp_path / "cache")
        small = len(hub.files["config.json"])

        def progress(done, total):
            if small < done < total:
                raise Interrupted()

        with pytest.raises(Interrupted):
            download(hub.repo_id, progress, poll_s=0.05)
        hub.release.set()          # the server sends the rest; the client must not keep it
        for t in threading.enumerate():
            if t.name.startswith("prunevid download"):
                t.join(60)
        snapshot = Path(tmp_path / "cache" / "models--fake-org--tiny-qwen" / "snapshots")
        finished = list(snapshot.glob("*/model.safetensors"))
    if int(huggingface_hub.__version__.split(".")[0]) >= 1:
        # from 1.0 the hub client reports every chunk through the progress class it is given, which stops it;
        # 0.3x reports only whole files there, so the file in flight finishes (and is then in the cache)
        assert not finished


def test_not_enough_disk_space_is_said_before_downloading(repo, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    with FakeHub(repo) as hub:
        hub.use(monkeypatch, tmp_path / "cache")
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
        with pytest.raises(ModelError, match=r"needs 25 MB more in .*cache, which has 1 MB free.*HF_HUB_CACHE"):
            download(hub.repo_id)
    assert not [p for _, p in hub.served if "/resolve/" in p]


def test_an_unknown_repo_is_one_line_naming_it(repo, tmp_path, monkeypatch):
    with FakeHub(repo) as hub:
        hub.use(monkeypatch, tmp_path / "cache")
        with pytest.raises(ModelError, match="cannot list the files of 'fake-org/nothing-here'") as e:
            download("fake-org/nothing-here")
    assert "\n" not in str(e.value)


def test_a_family_the_installed_transformers_lacks_is_refused_before_any_download(monkeypatch):
    """Qwen3.5 on transformers 4.57 (here the version string says so on either line): one line naming the version
    it needs, from the hub id alone, before a byte is fetched; the same from a tiny:qwen3_5 or a folder's model_type."""
    import transformers

    from prunevid import families, loader
    monkeypatch.setattr(transformers, "__version__", "4.57.6")
    monkeypatch.setattr("prunevid.loader.download", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(ModelError, match=r"^Qwen/Qwen3\.5-9B: Qwen3\.5 needs transformers >= 5\.25, "
                                         r"installed 4\.57\.6$"):
        loader.load("Qwen/Qwen3.5-9B", device="cpu")
    with pytest.raises(ModelError, match=r"Qwen3\.5 needs transformers >= 5\.25, installed 4\.57\.6$"):
        loader.resolve_model("tiny:qwen3_5")
    assert families.unavailable(families.FAMILIES["qwen3_vl"]) is None
