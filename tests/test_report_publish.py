"""Publishing the report: with the dataset (linked from its card) and as a static Space, through the one upload
function, with the same offline / auth errors and dry-run as the dataset push."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_runs import make_recycle_run
from test_cards import no_network  # noqa: F401  (fixture re-used)
from test_hub import FakeApi
from test_report import embedded

from srt_hf import cli, hub, runs
from srt_hf.errors import ConfigError


@pytest.fixture
def uploads(monkeypatch, hub_online):
    """Replace the one upload function; each call records the files its patterns select while they exist."""
    calls = []

    def fake_upload(folder, repo_id, *, repo_type, private=None, revision=None, allow_patterns=None,
                    ignore_patterns=None, delete_patterns=None, commit_message=None, space_sdk=None):
        folder = Path(folder)
        names = hub.selected_files(folder, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
        files = {name: (folder / name).read_bytes() for name in names}
        calls.append({"repo_id": repo_id, "repo_type": repo_type, "space_sdk": space_sdk, "files": files,
                      "delete_patterns": delete_patterns})
        return f"https://huggingface.co/{'spaces/' if repo_type == 'space' else 'datasets/'}{repo_id}"

    monkeypatch.setattr(hub, "upload", fake_upload)
    return calls


def test_space_then_dataset_link_each_other(tmp_path, uploads):
    from huggingface_hub import DatasetCard, SpaceCard

    run = make_recycle_run(tmp_path / "run", n=16)
    url = hub.push_space(run, "me/run-report", license="apache-2.0", dataset_repo_id="me/run")
    assert url == "https://huggingface.co/spaces/me/run-report"
    (space,) = uploads
    assert (space["repo_type"], space["space_sdk"]) == ("space", "static")
    assert sorted(space["files"]) == ["README.md", "index.html"] and space["delete_patterns"] == ["*"]
    readme = tmp_path / "space-README.md"
    readme.write_bytes(space["files"]["README.md"])
    card = SpaceCard.load(readme)
    assert (card.data.sdk, card.data.app_file, card.data.license, card.data.datasets) == (
        "static", "index.html", "apache-2.0", ["me/run"])
    assert embedded(space["files"]["index.html"].decode())["n"] == 16
    assert runs.read_meta(run)["space"]["url"] == url

    hub.push_dataset(run, "me/run")
    data = uploads[1]
    assert data["repo_type"] == "dataset" and "report.html" in data["files"]
    page = embedded(data["files"]["report.html"].decode())
    assert page["meta"]["space"]["repo_id"] == "me/run-report"  # the uploaded report links the Space
    (tmp_path / "card.md").write_bytes(data["files"]["README.md"])
    text = DatasetCard.load(tmp_path / "card.md").text
    space_link = "[me/run-report](https://huggingface.co/spaces/me/run-report)"
    assert f"[`report.html`](report.html) (also published as the Space {space_link})" in text


def test_space_upload_creates_a_static_space(tmp_path, monkeypatch, hub_online):
    import huggingface_hub

    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    run = make_recycle_run(tmp_path / "run", n=8)
    hub.push_space(run, "me/r", license="mit")
    (create, *_), upload = FakeApi.calls[0], FakeApi.calls[-1]
    assert create == "create_repo" and FakeApi.calls[0][2] == {"repo_type": "space", "private": None, "exist_ok": True,
                                                               "space_sdk": "static"}
    assert upload[0] == "upload_folder" and upload[2]["repo_type"] == "space"


def test_space_errors_and_dry_run(tmp_path, uploads, monkeypatch, capsys):
    run = make_recycle_run(tmp_path / "run", n=8)
    with pytest.raises(ConfigError, match="--license"):
        hub.push_space(run, "me/r")  # the report holds the data's texts: the same license rule as the data
    assert cli.main(["push", str(run)]) == 2
    assert "nothing to publish" in capsys.readouterr().err

    assert cli.main(["push", str(run), "--space", "me/r", "--repo-id", "me/d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 files to static Space me/r" in out and "index.html" in out
    assert "files to dataset repo me/d" in out and "report.html" in out and "pass --license" in out
    assert uploads == []

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert cli.main(["push", str(run), "--space", "me/r", "--license", "mit"]) == 2
    assert "unset HF_HUB_OFFLINE" in capsys.readouterr().err
    assert uploads == [] and "space" not in runs.read_meta(run)


def test_space_auth_failure_names_the_space(tmp_path, monkeypatch, hub_online):
    from types import SimpleNamespace

    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    class Refusing(FakeApi):
        def create_repo(self, repo_id, **kwargs):
            raise HfHubHTTPError("403 Forbidden", response=SimpleNamespace(status_code=403, headers={}, request=None))

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    run = make_recycle_run(tmp_path / "run", n=8)
    with pytest.raises(hub.HubError, match="space repo 'me/r'.*hf auth login"):
        hub.push_space(run, "me/r", license="mit")
