"""from_canonical: every layout round-trips to identical adapters; the diffusers layout reloads in diffusers with
identical per-module scales; kohya SDXL output uses the original SGM names."""

from __future__ import annotations

import copy
import json

import pytest
import real_layouts as L
import torch
from formats_models import assert_close, output, tiny_clip, tiny_unet, unet_inputs
from torch import nn

from lorakit.engine import AdapterManager
from lorakit.errors import FormatError
from lorakit.formats import from_canonical, to_canonical
from lorakit.kinds import AdapterKind, DoRA, Full, LoHa, LoKr, LoRA

G = torch.Generator().manual_seed(3)


def rnd(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G) * 0.2


ATT = "down_blocks.1.attentions.0"
TB = f"{ATT}.transformer_blocks.0"


def _shape(model, path):
    return tuple(model.get_submodule(path).weight.shape)


def all_kinds(unet, te, te2) -> dict[str, dict[str, AdapterKind]]:
    s = lambda p: _shape(unet, p)  # noqa: E731
    o, i = s(f"{TB}.ff.net.0.proj")
    c1 = s("down_blocks.0.resnets.0.conv1")
    u = {
        f"{TB}.attn1.to_q": LoRA(down=rnd(2, 16), up=rnd(16, 2), alpha=3.0),
        f"{TB}.attn1.to_k": LoRA(down=rnd(3, 16), up=rnd(16, 3)),
        f"{ATT}.proj_in": LoRA(down=rnd(2, 16), up=rnd(16, 2), alpha=1.0, bias=rnd(16)),
        "down_blocks.0.resnets.0.conv1": LoRA(down=rnd(2, c1[1], 3, 3), up=rnd(c1[0], 2, 1, 1), alpha=1.0),
        "down_blocks.0.resnets.0.conv2": LoRA(down=rnd(2, 8, 1, 1), up=rnd(8, 2, 1, 1), mid=rnd(2, 2, 3, 3), alpha=2.0),
        "down_blocks.0.resnets.1.conv1": LoHa(w1a=rnd(2, 8), w1b=rnd(2, 8), w2a=rnd(2, 8), w2b=rnd(2, 8),
                                             t1=rnd(2, 2, 3, 3), t2=rnd(2, 2, 3, 3), alpha=1.0),
        "down_blocks.0.resnets.0.time_emb_proj": LoHa(w1a=rnd(8, 2), w1b=rnd(2, 32), w2a=rnd(8, 2), w2b=rnd(2, 32), alpha=4.0),
        f"{TB}.ff.net.0.proj": LoKr(w1=rnd(4, 4), w2a=rnd(o // 4, 2), w2b=rnd(2, i // 4), alpha=1.0),
        f"{TB}.ff.net.2": LoKr(w1a=rnd(4, 1), w1b=rnd(1, 8), w2=rnd(4, 8)),
        f"{TB}.attn2.to_q": Full(diff=rnd(16, 16), diff_b=None),
        f"{TB}.attn2.to_out.0": Full(diff=rnd(16, 16), diff_b=rnd(16)),
        f"{ATT}.norm": Full(diff=rnd(16), diff_b=rnd(16)),
        f"{TB}.attn1.to_v": DoRA(inner=LoRA(down=rnd(2, 16), up=rnd(16, 2), alpha=1.0), magnitude=rnd(16).abs() + 1),
        f"{TB}.attn1.to_out.0": DoRA(inner=LoRA(down=rnd(2, 16), up=rnd(16, 2)), magnitude=rnd(16).abs() + 1, axis="in"),
        f"{TB}.attn2.to_k": DoRA(inner=LoHa(w1a=rnd(16, 2), w1b=rnd(2, 12), w2a=rnd(16, 2), w2b=rnd(2, 12)),
                                 magnitude=rnd(16).abs() + 1),
        "down_blocks.0.resnets.1.conv2": DoRA(inner=LoRA(down=rnd(2, 8, 3, 3), up=rnd(8, 2, 1, 1)),
                                              magnitude=rnd(8).abs() + 1),
        "add_embedding.linear_1": LoRA(down=rnd(2, 36), up=rnd(32, 2), alpha=0.5),
    }
    t1 = {"encoder.layers.0.self_attn.q_proj" if not hasattr(te, "text_model") else "text_model.encoder.layers.0.self_attn.q_proj":
          LoRA(down=rnd(2, 16), up=rnd(16, 2), alpha=2.0)}
    t2 = {"text_model.encoder.layers.1.mlp.fc1": LoRA(down=rnd(4, 16), up=rnd(24, 4), alpha=4.0),
          "text_projection": LoRA(down=rnd(2, 16), up=rnd(8, 2))}
    return {"unet": u, "text_encoder": t1, "text_encoder_2": t2}


def same(a: AdapterKind, b: AdapterKind, where: str) -> None:
    assert type(a) is type(b), where
    assert a.scale == pytest.approx(b.scale), where
    if isinstance(a, DoRA):
        assert a.axis == b.axis, where
        torch.testing.assert_close(a.magnitude.flatten(), b.magnitude.flatten(), rtol=0, atol=0)
        return same(a.inner, b.inner, where)
    ta, tb = dict(a.named_tensors()), dict(b.named_tensors())
    assert set(ta) == set(tb), where
    for n in ta:
        assert torch.equal(ta[n], tb[n]), f"{where}.{n}"


@pytest.fixture(scope="module")
def models():
    return {"unet": tiny_unet("sdxl"), "text_encoder": tiny_clip(False), "text_encoder_2": tiny_clip(True)}


@pytest.mark.parametrize("layout,family", [("diffusers", None), ("kohya", None), ("kohya", "sdxl"), ("peft", None)])
def test_round_trip_is_identical(models, layout, family):
    adapters = all_kinds(models["unet"], models["text_encoder"], models["text_encoder_2"])
    for name, m in models.items():
        for p, k in adapters[name].items():
            k.check_shape(m.get_submodule(p).weight.shape, p)
    groups = [{c: adapters[c]} for c in adapters] if layout == "peft" else [adapters]
    for group in groups:
        sd, meta = from_canonical(group, layout, family=family)
        assert all(isinstance(v, str) for v in meta.values())
        comps = {c: models[c] for c in group} if layout == "peft" else models
        conv = to_canonical(sd, meta, comps, source=layout, strict=True)
        for comp, mods in group.items():
            assert set(conv.adapters[comp]) == set(mods)
            for p, k in mods.items():
                same(conv.adapters[comp][p], k, f"{layout}:{comp}:{p}")
    if layout == "kohya" and family == "sdxl":
        assert any(k.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.") for k in sd)
        assert "lora_unet_label_emb_0_0.alpha" in sd and "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha" in sd


def test_kohya_sdxl_file_writes_back_its_own_names():
    sd, _ = L.kohya_sd("sdxl", compvis=True)
    conv = to_canonical(sd, None, None)
    out, meta = from_canonical(conv.adapters, "kohya", family="sdxl")
    assert set(out) == set(sd)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"


def test_diffusers_layout_reloads_in_diffusers_with_identical_scales(models):
    unet = models["unet"]
    ref = copy.deepcopy(unet)
    adapters = {
        f"{TB}.attn1.to_q": LoRA(down=rnd(2, 16), up=rnd(16, 2), alpha=8.0),
        f"{TB}.attn1.to_k": LoRA(down=rnd(4, 16), up=rnd(16, 4), alpha=1.0),
        f"{TB}.attn2.to_v": LoRA(down=rnd(4, 12), up=rnd(16, 4)),
        f"{TB}.ff.net.2": LoRA(down=rnd(2, 64), up=rnd(16, 2), alpha=1.0),
        "down_blocks.0.resnets.0.conv1": LoRA(down=rnd(3, 8, 3, 3), up=rnd(8, 3, 1, 1), alpha=1.0),
        "add_embedding.linear_2": LoRA(down=rnd(2, 32), up=rnd(32, 2), alpha=1.0),
    }
    sd, meta = from_canonical({"unet": adapters}, "diffusers")
    flat = json.loads(meta["lora_adapter_metadata"])
    ref.load_lora_adapter(dict(sd), prefix="unet", metadata=flat, adapter_name="x")
    mgr = AdapterManager(unet)
    try:
        mgr.add_adapter("x", adapters)
        inputs = unet_inputs(unet)
        assert_close(output(unet, inputs), output(ref, inputs))
    finally:
        mgr.delete_adapter("x")


def test_writer_rejects_bad_requests(models):
    with pytest.raises(FormatError):
        from_canonical({"unet": {"a": LoRA(down=rnd(1, 2), up=rnd(2, 1))}}, "comfy")
    with pytest.raises(FormatError):
        from_canonical({"unet": {"a": "not a kind"}}, "diffusers")
    with pytest.raises(FormatError):
        from_canonical({"unet": {"a": LoRA(down=rnd(1, 2), up=rnd(2, 1))}, "text_encoder": {"b": LoRA(down=rnd(1, 2), up=rnd(2, 1))}}, "peft")
    with pytest.raises(FormatError):
        from_canonical([], "kohya")
    with pytest.raises(FormatError):
        from_canonical({"vae": {"a": LoRA(down=rnd(1, 2), up=rnd(2, 1))}}, "kohya")
    with pytest.raises(FormatError):  # malformed kinds surface as lorakit errors
        from_canonical({"unet": {"a": LoRA(down=torch.zeros(()), up=torch.zeros(()))}}, "kohya")


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj_out = nn.Linear(8, 8)


class _Tree(nn.Module):
    """``proj_out`` at the top and in every block (as Flux has): a bare pattern key ``proj_out`` would hit them all."""

    def __init__(self) -> None:
        super().__init__()
        self.proj_out = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([_Block(), _Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b.proj_out(x)
        return self.proj_out(x)


def test_peft_patterns_name_one_module_each_in_lorakit_and_peft():
    """rank / alpha patterns of paths that are suffixes of other paths reload with identical scales in lorakit and in
    PEFT 0.21.2 (formats.write.peft_config: anchored, escaped keys)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    torch.manual_seed(0)
    tree = _Tree()
    adapters = {
        "proj_out": LoRA(down=rnd(2, 8), up=rnd(8, 2), alpha=8.0),
        "blocks.0.proj_out": LoRA(down=rnd(4, 8), up=rnd(8, 4), alpha=1.0),
        "blocks.1.proj_out": LoRA(down=rnd(4, 8), up=rnd(8, 4), alpha=1.0),
    }
    x = torch.randn(3, 8, generator=G)
    base = tree(x)
    ref = copy.deepcopy(tree)
    mgr = AdapterManager(tree)
    mgr.add_adapter("x", adapters)
    ours = tree(x)
    sd, meta = from_canonical({"unet": adapters}, "diffusers")
    cfg = {k.removeprefix("unet."): v for k, v in json.loads(meta["lora_adapter_metadata"]).items()}
    assert cfg["r"] == 4 and len(cfg["rank_pattern"]) == 1 and len(cfg["alpha_pattern"]) == 1
    # lorakit reads its own file back with the same scales
    back = to_canonical(sd, meta, {"unet": copy.deepcopy(ref)}, strict=True).adapters["unet"]
    assert {p: k.scale for p, k in back.items()} == {p: k.scale for p, k in adapters.items()}
    # PEFT builds the same adapters from the config and the tensors
    inject_adapter_in_model(LoraConfig(**cfg), ref, adapter_name="default")
    set_peft_model_state_dict(ref, {k.removeprefix("unet."): v for k, v in sd.items()}, adapter_name="default")
    with torch.no_grad():
        assert_close(ref(x), ours, base)
