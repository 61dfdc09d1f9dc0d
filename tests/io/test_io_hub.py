"""Hub sources without network: huggingface_hub's offline cache layout, and a mocked hf_hub_download."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from lorakit import errors
from lorakit.io import read_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lora_sd(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"unet.a.lora_A.weight": torch.randn(2, 4, generator=g), "unet.a.lora_B.weight": torch.randn(4, 2, generator=g)}


def make_cache(root: Path, repo_id: str, files: dict[str, dict[str, torch.Tensor]], ref: str = "main") -> Path:
    """The layout hf_hub_download writes: models--org--name/{refs/<ref>, snapshots/<commit>/<files>}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / ref).write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    for name, sd in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(snap / name))
    return snap


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_offline_cache_with_weight_name(tmp_path: Path) -> None:
    sd = lora_sd(0)
    make_cache(tmp_path, "someone/style-lora", {"style.safetensors": sd, "other.safetensors": lora_sd(1)})
    out, meta, name = read_source(
        "someone/style-lora", weight_name="style.safetensors", cache_dir=tmp_path, local_files_only=True
    )
    assert_same(out, sd)
    assert name == "hf://someone/style-lora/style.safetensors"


def test_offline_cache_picks_conventional_name(tmp_path: Path) -> None:
    sd = lora_sd(2)
    make_cache(tmp_path, "someone/lora", {"pytorch_lora_weights.safetensors": sd, "extra.safetensors": lora_sd(3)})
    out, _, _ = read_source("someone/lora", cache_dir=tmp_path, local_files_only=True)
    assert_same(out, sd)


def test_offline_cache_single_candidate_and_subfolder(tmp_path: Path) -> None:
    sd = lora_sd(4)
    make_cache(tmp_path, "someone/lora", {"loras/only_one.safetensors": sd, "top_level.safetensors": lora_sd(40)})
    out, _, name = read_source("someone/lora", subfolder="loras", cache_dir=tmp_path, local_files_only=True)
    assert_same(out, sd)
    assert name == "hf://someone/lora/loras/only_one.safetensors"


def test_offline_cache_revision(tmp_path: Path) -> None:
    sd = lora_sd(5)
    make_cache(tmp_path, "someone/lora", {"pytorch_lora_weights.safetensors": sd}, ref="v1.0")
    out, _, _ = read_source("someone/lora", revision="v1.0", cache_dir=tmp_path, local_files_only=True)
    assert_same(out, sd)
    out2, _, _ = read_source("someone/lora", revision=COMMIT, cache_dir=tmp_path, local_files_only=True)
    assert_same(out2, sd)


def test_offline_several_candidates(tmp_path: Path) -> None:
    make_cache(tmp_path, "someone/lora", {"a.safetensors": lora_sd(6), "b.safetensors": lora_sd(7)})
    with pytest.raises(errors.FormatError) as ei:
        read_source("someone/lora", cache_dir=tmp_path, local_files_only=True)
    assert "a.safetensors" in str(ei.value) and "b.safetensors" in str(ei.value) and "someone/lora" in str(ei.value)


def test_offline_hf_home_default_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub_cache = tmp_path / "hf_home" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    sd = lora_sd(8)
    make_cache(hub_cache, "someone/lora", {"pytorch_lora_weights.safetensors": sd})
    out, _, _ = read_source("someone/lora", local_files_only=True)
    assert_same(out, sd)


def test_offline_follows_hf_hub_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_listing(*a: Any, **k: Any) -> None:  # pragma: no cover - must not be called
        raise AssertionError("listed the repo while offline")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", no_listing)
    sd = lora_sd(9)
    make_cache(tmp_path, "someone/lora", {"pytorch_lora_weights.safetensors": sd})
    out, _, _ = read_source("someone/lora", cache_dir=tmp_path)
    assert_same(out, sd)


def test_offline_not_cached(tmp_path: Path) -> None:
    with pytest.raises(errors.SourceNotFoundError) as ei:
        read_source("someone/absent", weight_name="x.safetensors", cache_dir=tmp_path, local_files_only=True)
    assert "someone/absent" in str(ei.value) and "cache" in str(ei.value)
    make_cache(tmp_path, "someone/lora", {"pytorch_lora_weights.safetensors": lora_sd(0)})
    with pytest.raises(errors.SourceNotFoundError, match="missing.safetensors"):
        read_source("someone/lora", weight_name="missing.safetensors", cache_dir=tmp_path, local_files_only=True)


def test_mocked_download_forwards_every_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = lora_sd(10)
    local = tmp_path / "downloaded.safetensors"
    save_file(sd, str(local))
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def fake_download(*args: Any, **kwargs: Any) -> str:
        calls.append((args, kwargs))
        return str(local)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    out, _, name = read_source(
        "org/repo",
        weight_name="w.safetensors",
        subfolder="sub",
        cache_dir=tmp_path / "cache",
        force_download=True,
        proxies={"https": "http://proxy:3128"},
        local_files_only=False,
        token="hf_token",
        revision="refs/pr/1",
    )
    assert_same(out, sd)
    assert name == "hf://org/repo/sub/w.safetensors"
    (args, kwargs), = calls
    assert args == ("org/repo",)
    assert kwargs == {
        "filename": "w.safetensors",
        "subfolder": "sub",
        "cache_dir": tmp_path / "cache",
        "force_download": True,
        "proxies": {"https": "http://proxy:3128"},
        "local_files_only": False,
        "token": "hf_token",
        "revision": "refs/pr/1",
    }


def test_proxies_with_a_hub_that_does_not_take_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    local = tmp_path / "d.safetensors"
    save_file(lora_sd(11), str(local))
    seen: dict[str, Any] = {}

    def download(repo_id: str, filename: str, *, subfolder: Any = None, cache_dir: Any = None, force_download: bool = False,
                 local_files_only: bool = False, token: Any = None, revision: Any = None) -> str:
        seen.update(filename=filename, token=token)
        return str(local)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    read_source("org/repo", weight_name="w.safetensors", proxies={"https": "p"}, local_files_only=False)
    assert seen == {"filename": "w.safetensors", "token": None}
    assert "proxies" in caplog.text


@pytest.mark.parametrize(
    "files,expected",
    [
        (["README.md", "pytorch_lora_weights.safetensors", "other.safetensors", "optimizer.bin"], "pytorch_lora_weights.safetensors"),
        (["README.md", "my_lora.safetensors", "scheduler/scheduler_config.json"], "my_lora.safetensors"),
        (["pytorch_lora_weights.bin", "README.md"], "pytorch_lora_weights.bin"),
    ],
)
def test_mocked_listing_chooses_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: list[str], expected: str
) -> None:
    local = tmp_path / "d.safetensors"
    save_file(lora_sd(12), str(local))
    listed: list[dict[str, Any]] = []
    downloaded: list[str] = []

    def list_files(repo_id: str, **kwargs: Any) -> list[str]:
        listed.append({"repo_id": repo_id, **kwargs})
        return files

    def download(repo_id: str, filename: str, **kwargs: Any) -> str:
        downloaded.append(filename)
        return str(local)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    read_source("org/repo", revision="dev", token="t", local_files_only=False)
    assert listed == [{"repo_id": "org/repo", "revision": "dev", "token": "t"}]
    assert downloaded == [expected]


def test_mocked_listing_several_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, **k: ["a.safetensors", "b.safetensors"])
    with pytest.raises(errors.FormatError) as ei:
        read_source("org/repo", local_files_only=False)
    assert "org/repo" in str(ei.value) and "a.safetensors, b.safetensors" in str(ei.value)


def test_mocked_repository_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.errors import RepositoryNotFoundError

    def download(*a: Any, **k: Any) -> str:
        err = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
        Exception.__init__(err, "404 Client Error: Repository Not Found")
        raise err

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(errors.SourceNotFoundError, match="org/nope"):
        read_source("org/nope", weight_name="x.safetensors", local_files_only=False)


def test_downloaded_html_page_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "blob"
    page.write_text("<html><head><title>404</title></head><body>Not found</body></html>")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(page))
    with pytest.raises(errors.FormatError, match="HTML"):
        read_source("org/repo", weight_name="x.safetensors", local_files_only=False)


def test_inspect_from_the_offline_cache(tmp_path: Path) -> None:
    from lorakit.inspection import inspect

    make_cache(tmp_path, "someone/lora", {"pytorch_lora_weights.safetensors": lora_sd(13)})
    rep = inspect("someone/lora", cache_dir=tmp_path, local_files_only=True)
    assert rep.source == "hf://someone/lora/pytorch_lora_weights.safetensors"
    assert rep.header_only and rep.num_tensors == 2


def test_network_failures_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    class ConnectError(Exception):  # what httpx raises: not an OSError
        pass

    def boom(*a: Any, **k: Any) -> Any:
        raise ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", boom)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    with pytest.raises(errors.SourceNotFoundError, match="cannot list.*name resolution"):
        read_source("org/repo", local_files_only=False)
    with pytest.raises(errors.SourceNotFoundError, match="download failed.*name resolution"):
        read_source("org/repo", weight_name="w.safetensors", local_files_only=False)
