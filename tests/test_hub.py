"""Publishing: every upload goes through srt_hf.hub.upload, which the tests replace or feed a fake HfApi."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cards import DATASET_CARD_KEYS, make_run, no_network  # noqa: F401  (fixture re-used)

from srt_hf import cli, hub, runs
from srt_hf.errors import ConfigError, InputError


@pytest.fixture
def online(hub_online):
    """huggingface_hub not in offline mode; nothing can reach the Hub anyway (upload is replaced, sockets blocked)."""


def uploaded_copy(folder: Path, files: list[str], dest: Path) -> Path:
    """The files an upload call sends, copied to ``dest``: what the repo holds after the commit."""
    import shutil

    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / rel, dest / rel)
    return dest


@pytest.fixture
def uploads(monkeypatch, online, tmp_path):
    """Replace the one upload function; each call is recorded with the files its patterns select (huggingface_hub's
    own filter), and a dataset upload is loaded as the Hub would serve it."""
    import datasets
    from huggingface_hub import DatasetCard

    calls = []

    def fake_upload(folder, repo_id, *, repo_type, private=None, revision=None, allow_patterns=None,
                    ignore_patterns=None, delete_patterns=None, commit_message=None):
        folder = Path(folder)
        files = hub.selected_files(folder, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
        record = {"folder": folder, "repo_id": repo_id, "repo_type": repo_type, "private": private,
                  "revision": revision, "files": files, "delete_patterns": delete_patterns}
        if repo_type == "dataset":
            repo = uploaded_copy(folder, files, tmp_path / "hub" / f"{len(calls)}")
            record["sft_rows"] = len(datasets.load_dataset(str(repo), split="train"))
            record["rows"] = len(datasets.load_dataset(str(repo), "rows", split="train"))
            record["card"] = DatasetCard.load(repo / "README.md")
        calls.append(record)
        return f"https://huggingface.co/datasets/{repo_id}"

    monkeypatch.setattr(hub, "upload", fake_upload)
    return calls


def test_push_dataset_uploads_the_prepared_folder(tmp_path, uploads):
    run = make_run(tmp_path / "alpaca-srt")
    url = hub.push_dataset(run, "me/alpaca-srt", private=True, revision="v1")

    assert url == "https://huggingface.co/datasets/me/alpaca-srt"
    (call,) = uploads
    assert (call["repo_id"], call["repo_type"], call["private"], call["revision"]) == ("me/alpaca-srt", "dataset", True, "v1")
    assert call["folder"] == run  # the run folder itself, no staged copy
    assert "cache.sqlite" not in call["files"] and not any(f.startswith("work") for f in call["files"])
    assert call["delete_patterns"] == ["*"]  # what the commit does not upload is deleted from the repo
    assert {"README.md", "run.json", "rows.parquet", "selected.parquet", "sft/train.parquet",
            "images/ifd_histogram.png", "images/rifd_histogram.png"} <= set(call["files"])
    assert (call["sft_rows"], call["rows"]) == (16, 40)
    card = call["card"]
    assert set(card.data.to_dict()) <= DATASET_CARD_KEYS
    assert 'load_dataset("me/alpaca-srt", "rows", split="train")' in card.text
    assert runs.read_meta(run)["hub"] == {"repo_id": "me/alpaca-srt", "revision": "v1", "url": url}
    assert (run / runs.CACHE).exists() and (run / runs.WORK).exists()  # the run's own files stay


def test_unknown_license_is_asked_for_then_remembered(tmp_path, uploads):
    run = make_run(tmp_path / "run", license=None)
    with pytest.raises(ConfigError, match="--license"):
        hub.push_dataset(run, "me/run")
    assert uploads == []
    hub.push_dataset(run, "me/run", license="cc-by-nc-4.0")
    assert uploads[0]["card"].data.license == "cc-by-nc-4.0"
    assert runs.read_meta(run)["source"]["license"] == "cc-by-nc-4.0"


def test_not_a_run_folder(tmp_path, uploads):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a srt-hf run folder"):
        hub.push_dataset(tmp_path / "empty", "me/x", license="mit")
    assert uploads == []


def test_offline_gives_a_clear_error_before_any_call(tmp_path, monkeypatch, hub_offline):
    import huggingface_hub

    def no_api(*args, **kwargs):
        raise AssertionError("HfApi must not be used when offline")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_api)
    run = make_run(tmp_path / "run")
    for call in (lambda: hub.push_dataset(run, "me/run"), lambda: hub.upload(run, "me/run", repo_type="dataset")):
        with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE") as err:
            call()
        assert "hf auth login" in str(err.value)
    assert "hub" not in runs.read_meta(run)


class FakeApi:
    """Stands in for HfApi inside srt_hf.hub.upload and records the calls."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        self.calls.append(("create_repo", repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/{'datasets/' if kwargs['repo_type'] == 'dataset' else ''}{repo_id}")

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))


def test_upload_creates_the_repo_and_uploads_the_folder(tmp_path, monkeypatch, online):
    import huggingface_hub

    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    (tmp_path / "model").mkdir()
    url = hub.upload(tmp_path / "model", "me/model", repo_type="model", private=True, revision="dev",
                     ignore_patterns=["checkpoint-*"])
    assert url == "https://huggingface.co/me/model/tree/dev"
    (c1, n1, k1), (c2, n2, k2), (c3, n3, k3) = FakeApi.calls
    assert (c1, n1, k1) == ("create_repo", "me/model", {"repo_type": "model", "private": True, "exist_ok": True})
    assert (c2, n2, k2["branch"], k2["repo_type"]) == ("create_branch", "me/model", "dev", "model")
    assert (c3, n3, k3["folder_path"], k3["repo_type"], k3["revision"], k3["ignore_patterns"]) == (
        "upload_folder", "me/model", str(tmp_path / "model"), "model", "dev", ["checkpoint-*"])


def test_upload_explains_an_auth_failure(tmp_path, monkeypatch, online):
    from types import SimpleNamespace

    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    class Refusing(FakeApi):
        def create_repo(self, repo_id, **kwargs):
            response = SimpleNamespace(status_code=401, headers={}, request=None)  # what the error reads
            raise HfHubHTTPError("401 Unauthorized", response=response)

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    with pytest.raises(hub.HubError, match="hf auth login"):
        hub.upload(tmp_path, "me/x", repo_type="dataset")


def test_cli_push(tmp_path, monkeypatch, uploads, capsys):
    monkeypatch.setitem(cli.COMMANDS, "push", "srt_hf.commands.push")  # until cli.COMMANDS lists it
    run = make_run(tmp_path / "alpaca-srt")

    assert cli.main(["push", str(run), "--repo-id", "me/alpaca-srt", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sft/train.parquet" in out and "cache.sqlite" not in out and "work/" not in out
    assert uploads == []

    assert cli.main(["push", str(run), "--repo-id", "me/alpaca-srt"]) == 0
    assert uploads[0]["repo_type"] == "dataset" and uploads[0]["private"] is None
    assert "-> https://huggingface.co/datasets/me/alpaca-srt" in capsys.readouterr().out

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # huggingface_hub's own flag is the one srt_hf reads
    assert cli.main(["push", str(run), "--repo-id", "me/alpaca-srt"]) == 2
    assert "unset HF_HUB_OFFLINE" in capsys.readouterr().err
    assert len(uploads) == 1
    assert json.loads((run / "run.json").read_text())["hub"]["repo_id"] == "me/alpaca-srt"


class RepoApi(FakeApi):
    """A fake HfApi with a repo: upload_folder applies the patterns as huggingface_hub does (its own filter)."""

    repo: dict[str, bytes] = {}

    def upload_folder(self, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        folder = Path(kwargs["folder_path"])
        added = hub.selected_files(folder, allow_patterns=kwargs["allow_patterns"], ignore_patterns=kwargs["ignore_patterns"])
        if kwargs["delete_patterns"]:
            stale = set(filter_repo_objects(list(self.repo), allow_patterns=kwargs["delete_patterns"])) - {".gitattributes"}
            for name in stale - set(added):
                del self.repo[name]
        self.repo.update({name: (folder / name).read_bytes() for name in added})


def test_a_repush_leaves_exactly_the_runs_files(tmp_path, monkeypatch, online):
    """Files of an earlier push that the run no longer has are deleted in the next push's commit."""
    import huggingface_hub

    FakeApi.calls, RepoApi.repo = [], {".gitattributes": b"*.parquet filter=lfs", "old_notes.md": b"stale"}
    monkeypatch.setattr(huggingface_hub, "HfApi", RepoApi)
    run = make_run(tmp_path / "run")
    (run / runs.IMAGES).mkdir(exist_ok=True)
    (run / runs.IMAGES / "old_chart.png").write_bytes(b"from an earlier push")
    hub.push_dataset(run, "me/run")
    assert {"images/old_chart.png", "old_notes.md"} & set(RepoApi.repo) == {"images/old_chart.png"}

    (run / runs.IMAGES / "old_chart.png").unlink()
    (run / ".srt-hf.lock").write_text("held")  # never uploaded, never a reason to keep a remote file
    hub.push_dataset(run, "me/run")
    upload = FakeApi.calls[-1][2]
    assert upload["folder_path"] == str(run) and upload["delete_patterns"] == ["*"]
    assert sorted(RepoApi.repo) == sorted([".gitattributes", *hub.selected_files(
        run, allow_patterns=hub.RUN_ALLOW, ignore_patterns=hub.RUN_IGNORE)])
    assert "images/old_chart.png" not in RepoApi.repo and "cache.sqlite" not in RepoApi.repo
    assert {"README.md", "report.html", "run.json", "sft/train.parquet"} <= set(RepoApi.repo)


def test_dry_run_changes_no_file(tmp_path, capsys):
    import hashlib

    def digest(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    run = make_run(tmp_path / "run")
    hub.write_publish_files(run, repo_id="me/old")  # a card and report from an earlier push
    before = digest(run)
    assert cli.main(["push", str(run), "--repo-id", "me/new", "--space", "me/new-report", "--license", "mit",
                     "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "README.md" in out and "report.html" in out and "index.html" in out
    assert digest(run) == before


def test_a_push_never_uploads_a_folder_a_run_is_writing(tmp_path, uploads):
    from srt_hf.errors import LockedError
    from srt_hf.locks import output_lock

    run = make_run(tmp_path / "run")
    with output_lock(run, folder=True, command="srt-hf recycle"):
        with pytest.raises(LockedError, match="is in use by another run") as err:
            hub.push_dataset(run, "me/run")
    # push writes no --out: the fix names what a push can do, not another output folder
    assert "--out" not in str(err.value) and "somewhere else" not in str(err.value)
    assert str(err.value).endswith("and push again: the folder goes up as that run left it")
    assert uploads == []
    hub.push_dataset(run, "me/run")  # the run finished: the push goes through, without the lock file
    assert len(uploads) == 1 and not any(".srt-hf.lock" in f for f in uploads[0]["files"])
