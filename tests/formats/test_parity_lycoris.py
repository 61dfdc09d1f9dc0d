"""Files written by lycoris-lora's kohya-style network API give the same outputs through lorakit as through the
LyCORIS modules' own forward (not ``merge_to``, which applies alpha/r twice for LoHa/LoKr: formats.md §11)."""

from __future__ import annotations

import copy

import pytest
import torch
from formats_models import assert_close, clip_inputs, output, tiny_clip, tiny_unet, unet_inputs
from safetensors import safe_open
from safetensors.torch import load_file

from lorakit.engine import AdapterManager
from lorakit.formats import to_canonical

pytest.importorskip("lycoris")

#: (algo kwargs, expected canonical kinds)
CASES: dict[str, tuple[dict, set[str]]] = {
    "locon": (dict(algo="locon", conv_dim=3, conv_alpha=1.5), {"lora"}),
    "loha": (dict(algo="loha", conv_dim=2, conv_alpha=3), {"loha"}),
    "lokr": (dict(algo="lokr", conv_dim=2, conv_alpha=1, factor=2), {"lokr"}),
    "lokr-decompose": (dict(algo="lokr", factor=-1, decompose_both=True, network_dim=1), {"lokr"}),
    "tucker-locon": (dict(algo="locon", conv_dim=3, conv_alpha=2, use_tucker=True), {"lora"}),
    "tucker-loha": (dict(algo="loha", conv_dim=2, conv_alpha=1, use_tucker=True), {"loha"}),
    "dora-out": (dict(algo="locon", conv_dim=2, conv_alpha=1, dora_wd=True), {"dora"}),
    "dora-in": (dict(algo="lora", dora_wd=True, wd_on_output=False), {"dora"}),
    "loha-dora": (dict(algo="loha", dora_wd=True), {"dora"}),
    "full": (dict(algo="full"), {"full"}),
    "tucker-lokr": (dict(algo="lokr", conv_dim=2, conv_alpha=1, use_tucker=True, decompose_both=True, factor=2), {"lokr"}),
    "locon-norms": (dict(algo="locon", train_norm=True), {"lora", "full"}),
}


#: keys a case must produce (so the test covers the layout it is named after)
MARKERS = {"tucker-lokr": (".lokr_t2",), "tucker-loha": (".hada_t1",), "tucker-locon": (".lora_mid.weight",),
           "locon-norms": (".w_norm", ".b_norm"), "full": (".diff", ".diff_b"), "dora-in": (".dora_scale",),
           "lokr-decompose": (".lokr_w1_a",)}

#: LyCORIS' "full" preset restricted to the SD classes (its Anima "TimestepEmbedding" entry duplicates time_embedding)
PRESET = """
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []
"""


@pytest.fixture(autouse=True)
def _restore_lycoris_presets():
    """LyCORIS applies presets by mutating class attributes; put them back for other tests."""
    from lycoris import kohya, wrapper

    classes = (kohya.LycorisNetworkKohya, wrapper.LycorisNetwork)
    saved = [{k: v for k, v in vars(c).items() if k.isupper()} for c in classes]
    yield
    for c, attrs in zip(classes, saved):
        for k, v in attrs.items():
            setattr(c, k, v)


def _randomize(network: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if name.endswith("dora_scale"):
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("case", list(CASES))
def test_lycoris_kohya_network_file(tmp_path, case):
    from lycoris import kohya

    kwargs, kinds = CASES[case]
    kwargs = dict(kwargs)
    dim = kwargs.pop("network_dim", 4)
    unet, te = tiny_unet("sd1"), tiny_clip(False)
    ref_unet, ref_te = copy.deepcopy(unet), copy.deepcopy(te)
    preset = tmp_path / "preset.toml"
    preset.write_text(PRESET)
    network = kohya.create_network(1.0, dim, 2.0, None, ref_te, ref_unet, preset=str(preset), **kwargs)
    network.apply_to(ref_te, ref_unet, apply_text_encoder=True, apply_unet=True)
    _randomize(network, 11)
    path = str(tmp_path / "lyco.safetensors")
    network.save_weights(path, torch.float32, {"ss_network_module": "lycoris.kohya"})
    sd = load_file(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    for marker in MARKERS.get(case, ()):
        assert any(k.endswith(marker) for k in sd), marker
    conv = to_canonical(sd, meta, {"unet": unet, "text_encoder": te}, source=case)
    assert not conv.report.skipped, conv.report.summary()
    assert set(conv.report.components["unet"].kinds) == kinds
    u_in, t_in = unet_inputs(unet), clip_inputs()
    before_u, before_t = output(unet, u_in), output(te, t_in)
    with torch.no_grad():
        ref_u, ref_t = output(ref_unet, u_in), output(ref_te, t_in)
    AdapterManager(unet).add_adapter("a", conv.adapters["unet"])
    AdapterManager(te).add_adapter("a", conv.adapters["text_encoder"])
    assert_close(output(unet, u_in), ref_u, before_u)
    assert_close(output(te, t_in), ref_t, before_t)


def test_create_lycoris_wrapper_file(tmp_path):
    """``lycoris.create_lycoris`` (SimpleTuner's path): ``lycoris_`` + underscored diffusers names."""
    from lycoris import create_lycoris

    unet = tiny_unet("sdxl")
    ref = copy.deepcopy(unet)
    net = create_lycoris(ref, 1.0, linear_dim=4, linear_alpha=2.0, algo="lokr", factor=4, preset="attn-mlp")
    net.apply_to()
    _randomize(net, 5)
    path = str(tmp_path / "lycoris.safetensors")
    net.save_weights(path, torch.float32, None)
    sd = load_file(path)
    assert all(k.startswith("lycoris_") for k in sd)
    conv = to_canonical(sd, None, {"unet": unet}, source="lycoris")
    assert conv.format == "lycoris" and not conv.report.skipped
    inputs = unet_inputs(unet)
    before = output(unet, inputs)
    with torch.no_grad():
        want = output(ref, inputs)
    AdapterManager(unet).add_adapter("a", conv.adapters["unet"])
    assert_close(output(unet, inputs), want, before)
