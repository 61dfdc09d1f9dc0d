"""lorakit.inspect: header-only reading, family guess, metadata summary, coverage against a model."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lorakit
from lorakit import errors
from lorakit import io as lio
from lorakit.families import detect
from lorakit.inspection import InspectReport, inspect
from lorakit.tiny import tiny_components

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0"  # 320 wide in SD1/SD2
TINY_ATTN = "down_blocks.1.attentions.0.transformer_blocks.0"  # the tiny UNet has attention in block 1 only
XL_ATTN = "down_blocks.1.attentions.0.transformer_blocks.0"  # 640 wide in SDXL


def diffusers_sd(ranks: dict[str, int], widths: dict[str, tuple[int, int]], prefix: str = "unet.") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {}
    for path, r in ranks.items():
        out_f, in_f = widths[path]
        sd[f"{prefix}{path}.lora_A.weight"] = torch.randn(r, in_f, generator=g)
        sd[f"{prefix}{path}.lora_B.weight"] = torch.randn(out_f, r, generator=g)
    return sd


def garble_data(path: Path) -> None:
    """Overwrite the whole tensor data region with 0xFF (NaN for floats); the header stays valid."""
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    raw[8 + n :] = b"\xff" * (len(raw) - 8 - n)
    path.write_bytes(bytes(raw))


def test_header_only_never_reads_tensor_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = diffusers_sd(
        {f"{ATTN}.attn2.to_k": 4, f"{ATTN}.attn2.to_v": 4, f"{ATTN}.attn1.to_q": 8},
        {f"{ATTN}.attn2.to_k": (320, 768), f"{ATTN}.attn2.to_v": (320, 768), f"{ATTN}.attn1.to_q": (320, 320)},
    )
    sd = {k: v.half() if "to_q" in k else v for k, v in sd.items()}
    p = tmp_path / "lora.safetensors"
    save_file(sd, str(p), metadata={"ss_network_dim": "4"})
    garble_data(p)

    import safetensors.torch

    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(safetensors.torch, "load_file", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    read_keys: list[str] = []
    real_read_tensors = lio.files.read_tensors

    def spy(path: object, keys: object) -> dict[str, torch.Tensor]:
        keys = list(keys)  # type: ignore[call-overload]
        read_keys.extend(keys)
        return real_read_tensors(path, keys)  # type: ignore[arg-type]

    monkeypatch.setattr(lio.files, "read_tensors", spy)

    rep = inspect(p)
    assert rep.header_only
    assert read_keys == []  # no alpha tensors in this file, so nothing at all was read
    assert rep.format == "diffusers"
    assert rep.components == {"unet": 3}
    assert rep.ranks == {4: 2, 8: 1}
    assert rep.kinds == {"lora": 3}
    assert rep.dtypes == {"float32": 4, "float16": 2}
    assert rep.family == "SD1" and "768" in rep.family_evidence
    assert rep.num_tensors == 6
    assert rep.num_params == sum(t.numel() for t in sd.values())
    assert rep.file_size == p.stat().st_size
    # the data really is garbage: a full read sees NaNs
    monkeypatch.undo()
    full, _, _ = lio.read_source(p)
    assert torch.isnan(full[f"unet.{ATTN}.attn2.to_k.lora_A.weight"]).all()


def test_only_alpha_tensors_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = diffusers_sd({f"{ATTN}.attn2.to_k": 4}, {f"{ATTN}.attn2.to_k": (320, 1024)})
    sd[f"unet.{ATTN}.attn2.to_k.alpha"] = torch.tensor(2.0)
    p = tmp_path / "a.safetensors"
    save_file(sd, str(p))
    read_keys: list[str] = []
    real = lio.files.read_tensors

    def spy(path: object, keys: object) -> dict[str, torch.Tensor]:
        keys = list(keys)  # type: ignore[call-overload]
        read_keys.extend(keys)
        return real(path, keys)  # type: ignore[arg-type]

    monkeypatch.setattr(lio.files, "read_tensors", spy)
    rep = inspect(p)
    assert read_keys == [f"unet.{ATTN}.attn2.to_k.alpha"]
    assert rep.family == "SD2"
    assert rep.alpha_source  # non-empty description


@pytest.mark.parametrize(
    "shapes,metadata,family",
    [
        ({f"unet.{ATTN}.attn2.to_k.lora_A.weight": (4, 768)}, {}, "SD1"),
        ({f"unet.{ATTN}.attn2.to_v.lora.down.weight": (4, 1024)}, {}, "SD2"),
        ({f"unet.{ATTN}.attn2.processor.to_k_lora.down.weight": (4, 2048)}, {}, "SDXL"),
        ({f"{ATTN}.attn2.processor.to_k_lora.down.weight": (4, 768)}, {}, "SD1"),
        ({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (8, 2048)}, {}, "SDXL"),
        ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (8, 768)}, {}, "SD1"),
        ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.hada_w1_b": (8, 1024)}, {}, "SD2"),
        ({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": (16, 1536)}, {}, "SD3"),
        ({"transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight": (4, 1536)}, {}, "SD3"),
        ({"lora_transformer_transformer_blocks_0_attn_add_k_proj.lora_down.weight": (4, 1536)}, {}, "SD3"),
        ({"transformer.transformer_layers.0.attn1.to_q.lora_A.weight": (16, 1024)}, {}, "aMUSEd"),
        ({"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1280)}, {}, "SDXL"),
        ({"unet.add_embedding.linear_1.lora_A.weight": (4, 2816)}, {}, "SDXL"),
        ({"unet.down_blocks.2.attentions.0.transformer_blocks.7.attn1.to_q.lora_A.weight": (4, 1280)}, {}, "SDXL"),
        ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768)}, {}, "SD1"),
        ({"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 1024)}, {}, "SD2"),
        ({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 320, 1, 1)}, {}, "SD1"),
        ({"x.lora_A.weight": (4, 8)}, {"ss_base_model_version": "sdxl_base_v1-0"}, "SDXL"),
        ({"x.lora_A.weight": (4, 8)}, {"ss_base_model_version": "sd_v1"}, "SD1"),
        ({"x.lora_A.weight": (4, 8)}, {"ss_v2": "True", "ss_base_model_version": ""}, "SD2"),
        ({"x.lora_A.weight": (4, 8)}, {"modelspec.architecture": "stable-diffusion-v2-768-v/lora"}, "SD2"),
        ({"x.lora_A.weight": (4, 8)}, {"modelspec.architecture": "stable-diffusion-3-medium/lora"}, "SD3"),
        ({"x.lora_A.weight": (4, 8)}, {"ss_network_module": "networks.lora_sd3", "ss_base_model_version": "medium"}, "SD3"),
        # metadata wins over shapes
        ({f"unet.{ATTN}.attn2.to_k.lora_A.weight": (4, 768)}, {"ss_base_model_version": "sdxl_base_v1-0"}, "SDXL"),
        ({"x.lora_A.weight": (4, 8)}, {}, "unknown"),
    ],
)
def test_family_detection(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str], family: str) -> None:
    """The one detector (families.detect), which inspect reports, on header fields, key names and shapes."""
    guess = detect.from_keys(shapes, metadata)
    got = guess.family.display if guess.family is not None else "unknown"
    assert got == family, guess.evidence
    assert guess.evidence


def test_a_family_the_detector_leaves_open_comes_from_the_reference_model() -> None:
    """A LoKr file gives the detector no width to read (its Kronecker factors are fractions of the weight); inspect
    names the family whose reference model its keys fit (SD2: cross-attention width 1024) and says so."""
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    g = torch.Generator().manual_seed(0)
    sd = {f"{key}.lokr_w1": torch.randn(16, 32, generator=g), f"{key}.lokr_w2": torch.randn(20, 32, generator=g)}
    rep = inspect(sd)
    assert rep.kinds == {"lokr": 1}
    assert rep.family == "SD2" and "reference model" in rep.family_evidence


def test_dict_source_report_and_renderings() -> None:
    sd = diffusers_sd({f"{XL_ATTN}.attn2.to_k": 4}, {f"{XL_ATTN}.attn2.to_k": (640, 2048)})
    rep = inspect(sd)
    assert isinstance(rep, InspectReport)
    assert rep.source == "<dict>" and rep.file_size is None and not rep.header_only
    assert rep.family == "SDXL"
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["components"] == {"unet": 1} and d["ranks"] == {"4": 1}
    table = rep.format_table()
    for word in ("format", "base family", "SDXL", "ranks", "alphas", "dtypes", "unet: 1"):
        assert word in table
    assert str(rep) == table


def test_metadata_summary(tmp_path: Path) -> None:
    sd = diffusers_sd({f"{ATTN}.attn2.to_k": 4}, {f"{ATTN}.attn2.to_k": (320, 768)})
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "4",
        "ss_network_alpha": "2.0",
        "ss_network_args": json.dumps({"conv_dim": "8", "conv_alpha": "4"}),
        "ss_base_model_version": "sd_v1",
        "ss_tag_frequency": json.dumps({"x": {"tag": 3}}),
        "ss_learning_rate": "0.0001",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.title": "my lora",
        "lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 2, "unet.alpha_pattern": {"a": 1}}),
        "custom": "x" * 500,
    }
    p = tmp_path / "m.safetensors"
    save_file(sd, str(p), metadata=meta)
    rep = inspect(p)
    kohya = rep.metadata["kohya"]
    assert kohya["ss_network_dim"] == "4" and kohya["ss_network_args"] == {"conv_dim": "8", "conv_alpha": "4"}
    assert "ss_tag_frequency" not in kohya and kohya["other_ss_keys"] == 1
    assert rep.metadata["modelspec"]["modelspec.title"] == "my lora"
    assert rep.metadata["diffusers"]["unet.alpha_pattern"] == {"a": 1}
    assert len(rep.metadata["other"]["custom"]) < 300
    assert rep.family == "SD1" and "modelspec" in rep.family_evidence
    table = rep.format_table()
    assert "ss_network_dim" in table and "unet (r=4, lora_alpha=2, alpha_pattern: 1)" in table


def test_coverage_against_a_model(tmp_path: Path) -> None:
    unet = tiny_components("sd1")["unet"]
    mods = dict(unet.named_modules())
    good = [f"{TINY_ATTN}.attn1.to_q", f"{TINY_ATTN}.attn2.to_k", "mid_block.resnets.0.time_emb_proj"]
    ranks = {p: 2 for p in good}
    widths = {p: tuple(mods[p].weight.shape) for p in good}
    ranks["down_blocks.9.no_such_module"] = 2
    widths["down_blocks.9.no_such_module"] = (8, 8)
    ranks[f"{TINY_ATTN}.attn1.to_v"] = 2
    widths[f"{TINY_ATTN}.attn1.to_v"] = (5, 7)  # wrong shape
    p = tmp_path / "c.safetensors"
    save_file(diffusers_sd(ranks, widths), str(p))
    rep = inspect(p, components={"unet": unet})
    cov = rep.coverage["unet"]  # type: ignore[index]
    assert cov["modules"] == 5
    assert cov["matched"] == 3
    assert cov["modules"] - cov["matched"] == 2
    assert "coverage unet" in rep.format_table()
    # a pipeline-like object (components attribute) and a bare module work too
    class Pipe:
        components = {"unet": unet, "scheduler": object()}

    assert inspect(p, model=Pipe()).coverage["unet"]["matched"] == 3  # type: ignore[index]
    assert inspect(p, model=unet).coverage["unet"]["matched"] == 3  # type: ignore[index]


def test_coverage_component_absent(tmp_path: Path) -> None:
    sd = diffusers_sd({"encoder.layers.0.self_attn.q_proj": 2}, {"encoder.layers.0.self_attn.q_proj": (32, 32)}, "text_encoder.")
    unet = tiny_components("sd1")["unet"]
    rep = inspect(sd, components={"unet": unet})
    cov = rep.coverage["text_encoder"]  # type: ignore[index]
    assert cov["matched"] == 0 and "text_encoder" in cov["error"]


def test_pickle_file_reads_everything(tmp_path: Path) -> None:
    sd = diffusers_sd({f"{ATTN}.attn2.to_k": 4}, {f"{ATTN}.attn2.to_k": (320, 768)})
    p = tmp_path / "w.bin"
    torch.save(sd, p)
    rep = inspect(p)
    assert not rep.header_only and rep.family == "SD1" and rep.file_size == p.stat().st_size


def test_bad_files_raise_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(errors.SourceNotFoundError):
        inspect(tmp_path / "missing.safetensors")
    p = tmp_path / "page.safetensors"
    p.write_text("<html><body>hi</body></html>")
    with pytest.raises(errors.FormatError, match="HTML"):
        inspect(p)
    q = tmp_path / "trunc.safetensors"
    save_file({"unet.a.lora_A.weight": torch.zeros(4, 4)}, str(q))
    q.write_bytes(q.read_bytes()[:-4])
    with pytest.raises(errors.FormatError, match="truncated"):
        inspect(q)


def test_public_function(tmp_path: Path) -> None:
    """``lorakit.inspect`` is the function (no callable module); its module is ``lorakit.inspection``."""
    sd = diffusers_sd({f"{ATTN}.attn2.to_k": 4}, {f"{ATTN}.attn2.to_k": (320, 768)})
    assert lorakit.inspect is inspect and inspect.__module__ == "lorakit.inspection"
    assert lorakit.inspect(sd).family == "SD1"


def test_file_that_fits_no_reference_model_is_still_described(tmp_path: Path) -> None:
    """Tiny / custom model sizes: no reference model fits, but inspect still reports the file (with a warning)."""
    sd = diffusers_sd({f"{TINY_ATTN}.attn1.to_q": 2, "not.a.real.module": 2}, {f"{TINY_ATTN}.attn1.to_q": (16, 16), "not.a.real.module": (3, 3)})
    p = tmp_path / "tiny.safetensors"
    save_file(sd, str(p))
    rep = inspect(p)
    assert rep.format == "diffusers" and rep.warnings
    assert rep.components == {"unet": 2}
    # against the real (tiny) model the one real module lands
    rep2 = inspect(p, components={"unet": tiny_components("sd1")["unet"]})
    assert rep2.coverage["unet"]["matched"] == 1 and rep2.coverage["unet"]["not_in_model"] == 1  # type: ignore[index]
    assert rep2.components == {"unet": 1}  # described from the conversion against the model


def test_unknown_layout_raises(tmp_path: Path) -> None:
    p = tmp_path / "odd.safetensors"
    save_file({"foo.bar": torch.zeros(2), "baz": torch.zeros(3)}, str(p))
    with pytest.raises(errors.KeyMismatchError) as ei:
        inspect(p)
    assert str(p) in str(ei.value)


def test_skipped_keys_and_alpha_source_in_table(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    base = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    sd = {
        f"{base}.lora_down.weight": torch.randn(4, 768, generator=g),
        f"{base}.lora_up.weight": torch.randn(320, 4, generator=g),
        f"{base}.alpha": torch.tensor(2.0),
        # an embedded textual inversion: still reported as "unsupported kind" (OFT files load since issue 13)
        "bundle_emb.mytoken.string_to_param.*": torch.randn(1, 768, generator=g),
    }
    p = tmp_path / "k.safetensors"
    save_file(sd, str(p))
    rep = inspect(p)
    assert rep.format.startswith("kohya") or "kohya" in rep.format
    assert rep.alphas == {"2": 1} and rep.alpha_source == "per-module .alpha tensors"
    table = rep.format_table()
    assert "skipped keys" in table and "unsupported kind" in table
