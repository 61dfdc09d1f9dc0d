"""Key -> tensor fixtures of real-world layouts at real model sizes, written from the facts in formats.md (§2, §3, §8)
and the published configs, independently of lorakit's own tables.

Each builder returns ``(state_dict, expected)`` where ``expected`` maps the file's module name to
``(component, diffusers module path(s), op)``: ``"direct"`` (one module), ``"split"`` (a fused projection whose
output rows go, in equal consecutive chunks, to the paths in order: SD3 ``qkv`` -> q, k, v) or ``"swap"`` (one module
whose two output halves are exchanged: SAI adaLN (shift, scale) -> diffusers (scale, shift)). Tensors are seeded
random (rank 2), different for every module, so a module landing on the wrong path, a wrong row order or a wrong
alpha changes the delta the tests compute by the formula; everything stays a few tens of MB.
"""

from __future__ import annotations

import re

import torch

R = 2  # rank used by the fixtures (not a multiple of 3: fused qkv is split generically)
Shape = tuple[int, ...]
Expected = dict[str, tuple[str, tuple[str, ...], str]]
_G = torch.Generator().manual_seed(20240)


def rnd(*shape: int) -> torch.Tensor:
    """Seeded noise (one generator for every fixture: each module gets different values)."""
    return torch.randn(shape, generator=_G) * 0.1


def kohya_lora(sd: dict, name: str, out: int, inp: int, k: int | None = None, alpha: float = 1.0) -> None:
    """kohya LoRA/LoCon tensors for one module (conv when ``k`` is given)."""
    if k is None:
        sd[f"{name}.lora_down.weight"] = rnd(R, inp)
        sd[f"{name}.lora_up.weight"] = rnd(out, R)
    else:
        sd[f"{name}.lora_down.weight"] = rnd(R, inp, k, k)
        sd[f"{name}.lora_up.weight"] = rnd(out, R, 1, 1)
    sd[f"{name}.alpha"] = torch.tensor(alpha)


def peft_lora(sd: dict, name: str, out: int, inp: int, k: int | None = None) -> None:
    if k is None:
        sd[f"{name}.lora_A.weight"] = rnd(R, inp)
        sd[f"{name}.lora_B.weight"] = rnd(out, R)
    else:
        sd[f"{name}.lora_A.weight"] = rnd(R, inp, k, k)
        sd[f"{name}.lora_B.weight"] = rnd(out, R, 1, 1)


# --------------------------------------------------------------------------------------------- SD UNets (diffusers)
def unet_modules(
    channels: list[int], attn_down: list[int], attn_up: list[int], tblocks_down: list[int], tblocks_up: list[int],
    tblocks_mid: int, cross: int, conv_proj: bool, temb: int = 1280, extra: dict | None = None,
) -> dict[str, tuple[int, int, int | None]]:
    """diffusers path -> (out, in, kernel or None) of every module kohya trains (attention blocks + LoCon convs)."""
    mods: dict[str, tuple[int, int, int | None]] = {}

    def attention(prefix: str, c: int, nblocks: int) -> None:
        k = 1 if conv_proj else None
        mods[f"{prefix}.proj_in"] = (c, c, k)
        mods[f"{prefix}.proj_out"] = (c, c, k)
        for b in range(nblocks):
            t = f"{prefix}.transformer_blocks.{b}"
            for a in ("attn1", "attn2"):
                mods[f"{t}.{a}.to_q"] = (c, c, None)
                kv_in = c if a == "attn1" else cross
                mods[f"{t}.{a}.to_k"] = (c, kv_in, None)
                mods[f"{t}.{a}.to_v"] = (c, kv_in, None)
                mods[f"{t}.{a}.to_out.0"] = (c, c, None)
            mods[f"{t}.ff.net.0.proj"] = (8 * c, c, None)
            mods[f"{t}.ff.net.2"] = (c, 4 * c, None)

    def resnet(prefix: str, cin: int, cout: int) -> None:
        mods[f"{prefix}.conv1"] = (cout, cin, 3)
        mods[f"{prefix}.conv2"] = (cout, cout, 3)
        mods[f"{prefix}.time_emb_proj"] = (cout, temb, None)
        if cin != cout:
            mods[f"{prefix}.conv_shortcut"] = (cout, cin, 1)

    n = len(channels)
    prev = channels[0]
    for i, c in enumerate(channels):
        for j in range(2):
            resnet(f"down_blocks.{i}.resnets.{j}", prev if j == 0 else c, c)
            if i in attn_down:
                attention(f"down_blocks.{i}.attentions.{j}", c, tblocks_down[i])
        if i < n - 1:
            mods[f"down_blocks.{i}.downsamplers.0.conv"] = (c, c, 3)
        prev = c
    top = channels[-1]
    resnet("mid_block.resnets.0", top, top)
    resnet("mid_block.resnets.1", top, top)
    attention("mid_block.attentions.0", top, tblocks_mid)
    rev = channels[::-1]
    prev_out = rev[0]
    for i, c in enumerate(rev):
        in_c = rev[min(i + 1, n - 1)]
        for j in range(3):
            skip = in_c if j == 2 else c
            resnet(f"up_blocks.{i}.resnets.{j}", (prev_out if j == 0 else c) + skip, c)
            if i in attn_up:
                attention(f"up_blocks.{i}.attentions.{j}", c, tblocks_up[i])
        if i < n - 1:
            mods[f"up_blocks.{i}.upsamplers.0.conv"] = (c, c, 3)
        prev_out = c
    mods["conv_in"] = (channels[0], 4, 3)
    mods["conv_out"] = (4, channels[0], 3)
    mods["time_embedding.linear_1"] = (temb, channels[0], None)
    mods["time_embedding.linear_2"] = (temb, temb, None)
    mods.update(extra or {})
    return mods


def compvis_name(path: str, attn_up_levels: set[int]) -> str:
    """formats.md §3.2 / §3.3: diffusers -> CompVis/SGM names (A1111 ``convert_diffusers_name_to_compvis``, L = 2)."""
    leaves = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
    top = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
           "add_embedding.linear_2": "label_emb.0.2"}
    if path in top:
        return top[path]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", path)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        rest = leaves.get(rest, rest) if kind == "resnets" else rest
        return f"input_blocks.{1 + 3 * i + j}.{0 if kind == 'resnets' else 1}.{rest}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", path)
    if m:
        return f"input_blocks.{3 + 3 * int(m[1])}.0.op"
    m = re.match(r"mid_block\.attentions\.0\.(.+)", path)
    if m:
        return f"middle_block.1.{m[1]}"
    m = re.match(r"mid_block\.resnets\.(\d+)\.(.+)", path)
    if m:
        return f"middle_block.{2 * int(m[1])}.{leaves[m[2]]}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", path)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        rest = leaves.get(rest, rest) if kind == "resnets" else rest
        return f"output_blocks.{3 * i + j}.{0 if kind == 'resnets' else 1}.{rest}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", path)
    if m:
        i = int(m[1])
        return f"output_blocks.{2 + 3 * i}.{2 if i in attn_up_levels else 1}.conv"
    raise AssertionError(path)


def clip_modules(layers: int, width: int, mlp: int) -> dict[str, tuple[int, int, None]]:
    mods: dict[str, tuple[int, int, None]] = {}
    for n in range(layers):
        p = f"text_model.encoder.layers.{n}"
        for q in ("q_proj", "k_proj", "v_proj", "out_proj"):
            mods[f"{p}.self_attn.{q}"] = (width, width, None)
        mods[f"{p}.mlp.fc1"] = (mlp, width, None)
        mods[f"{p}.mlp.fc2"] = (width, mlp, None)
    return mods


SD1 = dict(channels=[320, 640, 1280, 1280], attn_down=[0, 1, 2], attn_up=[1, 2, 3], tblocks_down=[1, 1, 1, 0],
           tblocks_up=[0, 1, 1, 1], tblocks_mid=1)
SDXL = dict(channels=[320, 640, 1280], attn_down=[1, 2], attn_up=[0, 1], tblocks_down=[0, 2, 10],
            tblocks_up=[10, 2, 0], tblocks_mid=10)


def kohya_sd(family: str, compvis: bool = False) -> tuple[dict, Expected]:
    """kohya SD1 / SD2 (diffusers-derived or A1111 CompVis names) or SDXL (SGM names) with LoCon and TE keys."""
    if family == "sdxl":
        unet = unet_modules(**SDXL, cross=2048, conv_proj=False,
                            extra={"add_embedding.linear_1": (1280, 2816, None), "add_embedding.linear_2": (1280, 1280, None)})
        tes = {"lora_te1": ("text_encoder", clip_modules(12, 768, 3072)),
               "lora_te2": ("text_encoder_2", clip_modules(32, 1280, 5120))}
        compvis, up_attn = True, {0, 1}
    else:
        cross, te = (768, clip_modules(12, 768, 3072)) if family == "sd1" else (1024, clip_modules(23, 1024, 4096))
        unet = unet_modules(**SD1, cross=cross, conv_proj=family == "sd1")
        tes = {"lora_te": ("text_encoder", te)}
        up_attn = {1, 2, 3}
    sd: dict = {}
    expected: Expected = {}
    for path, (o, i, k) in unet.items():
        name = "lora_unet_" + (compvis_name(path, up_attn) if compvis else path).replace(".", "_")
        kohya_lora(sd, name, o, i, k, alpha=1.0 if k == 3 else 2.0)
        expected[name] = ("unet", (path,), "direct")
    for prefix, (comp, mods) in tes.items():
        for path, (o, i, k) in mods.items():
            name = f"{prefix}_{path.replace('.', '_')}"
            kohya_lora(sd, name, o, i, k)
            expected[name] = (comp, (path,), "direct")
    return sd, expected


# --------------------------------------------------------------------------------------------- SD3 medium
D, BLOCKS = 1536, 24


def sd3_kohya(
    D: int = D, BLOCKS: int = BLOCKS, encoders: bool = True, split_qkv: bool = False  # noqa: N803
) -> tuple[dict, Expected]:
    """kohya sd-scripts ``lora_sd3`` names (SAI MMDiT) + CLIP-L/G + T5 (``lora_te3_``); SD3.5-large: D=2432, 38 blocks.

    ``split_qkv``: sd-scripts' ``split_qkv`` network arg: each fused qkv holds three rank-R LoRAs, ``down`` stacked
    (3R, D) and ``up`` block-diagonal (3D, 3R) (the header must say ``split_qkv``)."""
    sd: dict = {}
    exp: Expected = {}

    def add(name: str, out: int, inp: int, targets: tuple[str, ...], k: int | None = None, comp: str = "transformer",
            op: str = "direct") -> None:
        if op == "split" and split_qkv:
            sd[f"{name}.lora_down.weight"] = torch.cat([rnd(R, inp) for _ in targets])
            sd[f"{name}.lora_up.weight"] = torch.block_diag(*[rnd(out // len(targets), R) for _ in targets])
            sd[f"{name}.alpha"] = torch.tensor(1.0)
        else:
            kohya_lora(sd, name, out, inp, k)
        exp[name] = (comp, targets, op)

    for i in range(BLOCKS):
        b = f"transformer_blocks.{i}"
        last = i == BLOCKS - 1
        for blk in ("x_block", "context_block"):
            p = f"lora_unet_joint_blocks_{i}_{blk}"
            qkv = ("attn.to_q", "attn.to_k", "attn.to_v") if blk == "x_block" else ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")
            add(f"{p}_attn_qkv", 3 * D, D, tuple(f"{b}.{q}" for q in qkv), op="split")
            if blk == "context_block" and last:
                add(f"{p}_adaLN_modulation_1", 2 * D, D, (f"{b}.norm1_context.linear",), op="swap")
                continue
            add(f"{p}_attn_proj", D, D, (f"{b}.attn.to_out.0" if blk == "x_block" else f"{b}.attn.to_add_out",))
            ff = "ff" if blk == "x_block" else "ff_context"
            add(f"{p}_mlp_fc1", 4 * D, D, (f"{b}.{ff}.net.0.proj",))
            add(f"{p}_mlp_fc2", D, 4 * D, (f"{b}.{ff}.net.2",))
            add(f"{p}_adaLN_modulation_1", 6 * D, D, (f"{b}.norm1.linear" if blk == "x_block" else f"{b}.norm1_context.linear",))
    add("lora_unet_context_embedder", D, 4096, ("context_embedder",))
    add("lora_unet_t_embedder_mlp_0", D, 256, ("time_text_embed.timestep_embedder.linear_1",))
    add("lora_unet_t_embedder_mlp_2", D, D, ("time_text_embed.timestep_embedder.linear_2",))
    add("lora_unet_y_embedder_mlp_0", D, 2048, ("time_text_embed.text_embedder.linear_1",))
    add("lora_unet_y_embedder_mlp_2", D, D, ("time_text_embed.text_embedder.linear_2",))
    add("lora_unet_final_layer_linear", 2 * 2 * 16, D, ("proj_out",))
    add("lora_unet_final_layer_adaLN_modulation_1", 2 * D, D, ("norm_out.linear",), op="swap")
    add("lora_unet_x_embedder_proj", D, 16, ("pos_embed.proj",), k=2)
    if not encoders:
        return sd, exp
    for prefix, comp, (layers, width, mlp) in (("lora_te1", "text_encoder", (12, 768, 3072)),
                                                ("lora_te2", "text_encoder_2", (32, 1280, 5120))):
        for path, (o, i_, _) in clip_modules(layers, width, mlp).items():
            add(f"{prefix}_{path.replace('.', '_')}", o, i_, (path,), comp=comp)
    for n in range(24):
        for leaf, (o, i_) in {"layer.0.SelfAttention.q": (4096, 4096), "layer.0.SelfAttention.k": (4096, 4096),
                              "layer.0.SelfAttention.v": (4096, 4096), "layer.0.SelfAttention.o": (4096, 4096),
                              "layer.1.DenseReluDense.wi_0": (10240, 4096), "layer.1.DenseReluDense.wi_1": (10240, 4096),
                              "layer.1.DenseReluDense.wo": (4096, 10240)}.items():
            path = f"encoder.block.{n}.{leaf}"
            add(f"lora_te3_{path.replace('.', '_')}", o, i_, (path,), comp="text_encoder_3")
    return sd, exp


def sd3_diffusers_modules() -> dict[str, tuple[int, int]]:
    mods: dict[str, tuple[int, int]] = {}
    for i in range(BLOCKS):
        b = f"transformer_blocks.{i}"
        last = i == BLOCKS - 1
        for q in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj"):
            mods[f"{b}.attn.{q}"] = (D, D)
        mods[f"{b}.ff.net.0.proj"] = (4 * D, D)
        mods[f"{b}.ff.net.2"] = (D, 4 * D)
        mods[f"{b}.norm1.linear"] = (6 * D, D)
        mods[f"{b}.norm1_context.linear"] = (2 * D if last else 6 * D, D)
        if not last:
            mods[f"{b}.attn.to_add_out"] = (D, D)
            mods[f"{b}.ff_context.net.0.proj"] = (4 * D, D)
            mods[f"{b}.ff_context.net.2"] = (D, 4 * D)
    mods["context_embedder"] = (D, 4096)
    mods["proj_out"] = (64, D)
    mods["norm_out.linear"] = (2 * D, D)
    return mods


def sd3_onetrainer() -> tuple[dict, Expected]:
    """OneTrainer legacy: ``lora_transformer_`` + underscored diffusers names, ``lora_te1_``/``lora_te3_``."""
    sd: dict = {}
    exp: Expected = {}
    for path, (o, i) in sd3_diffusers_modules().items():
        name = "lora_transformer_" + path.replace(".", "_")
        kohya_lora(sd, name, o, i)
        exp[name] = ("transformer", (path,), "direct")
    kohya_lora(sd, "lora_te1_text_projection", 768, 768)
    exp["lora_te1_text_projection"] = ("text_encoder", ("text_projection",), "direct")
    kohya_lora(sd, "lora_te2_text_projection", 1280, 1280)
    exp["lora_te2_text_projection"] = ("text_encoder_2", ("text_projection",), "direct")
    kohya_lora(sd, "lora_te3_encoder_block_0_layer_0_SelfAttention_q", 4096, 4096)
    exp["lora_te3_encoder_block_0_layer_0_SelfAttention_q"] = (
        "text_encoder_3", ("encoder.block.0.layer.0.SelfAttention.q",), "direct")
    return sd, exp


def sd3_diffusers() -> tuple[dict, Expected]:
    sd: dict = {}
    exp: Expected = {}
    for path, (o, i) in sd3_diffusers_modules().items():
        peft_lora(sd, f"transformer.{path}", o, i)
        exp[f"transformer.{path}"] = ("transformer", (path,), "direct")
    for path, (o, i, _) in clip_modules(12, 768, 3072).items():
        peft_lora(sd, f"text_encoder.{path}", o, i)
        exp[f"text_encoder.{path}"] = ("text_encoder", (path,), "direct")
    return sd, exp


# --------------------------------------------------------------------------------------------- aMUSEd
def amused_train_script() -> tuple[dict, Expected]:
    """``train_amused.py``: PEFT to_q/to_k/to_v in the transformer, q/k/v/out in the text encoder, no alpha."""
    sd: dict = {}
    exp: Expected = {}
    hidden, ch = 1024, 768
    mods: dict[str, tuple[int, int]] = {}
    for n in range(22):
        for a in ("attn1", "attn2"):
            for q in ("to_q", "to_k", "to_v"):
                mods[f"transformer_layers.{n}.{a}.{q}"] = (hidden, hidden)
    for blk in ("down_block", "up_block"):
        for n in range(3):
            for q in ("to_q", "to_k", "to_v"):
                mods[f"{blk}.attention_blocks.{n}.attn1.{q}"] = (ch, ch)
                mods[f"{blk}.attention_blocks.{n}.attn2.{q}"] = (ch, ch)
    for path, (o, i) in mods.items():
        peft_lora(sd, f"transformer.{path}", o, i)
        exp[f"transformer.{path}"] = ("transformer", (path,), "direct")
    for path, (o, i, _) in clip_modules(12, 768, 3072).items():
        if "self_attn" in path:
            peft_lora(sd, f"text_encoder.{path}", o, i)
            exp[f"text_encoder.{path}"] = ("text_encoder", (path,), "direct")
    return sd, exp
