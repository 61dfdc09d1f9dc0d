"""Flux.1: the BFL (``double_blocks`` / ``single_blocks``) <-> diffusers ``FluxTransformer2DModel`` map.

BFL's reference implementation (and the kohya sd-scripts, ComfyUI, XLabs and OneTrainer files written against it)
fuses projections that diffusers keeps apart:

* a double block's ``img_attn.qkv`` / ``txt_attn.qkv`` (rows q, k, v, ``dim`` each) are ``attn.to_q/to_k/to_v`` /
  ``attn.add_q_proj/add_k_proj/add_v_proj``;
* a single block's ``linear1`` (rows q, k, v, then the MLP input, ``mlp_ratio * dim`` rows) is ``attn.to_q``,
  ``attn.to_k``, ``attn.to_v`` and ``proj_mlp``; ``linear2`` (input = attention output, then the activated MLP) is
  ``proj_out``.

Those are ``op="split"``: the fused output rows are split by the targets' own row counts, so the unequal
q/k/v/MLP parts of ``linear1`` come out right at any width. The modulations (``img_mod.lin``, ``txt_mod.lin``,
``modulation.lin``) keep BFL's chunk order in diffusers (shift, scale, gate, ...), so they are ``direct``; only
``final_layer.adaLN_modulation.1`` stores (shift, scale) where diffusers' ``norm_out.linear`` has (scale, shift)
(``op="swap"``).

Also covered: OneTrainer's split spellings of the fused projections (``img_attn.qkv.0/1/2``,
``linear1.0/1/2/3``) and the XLabs processor names (``double_blocks.{i}.processor.qkv_lora1`` ...; XLabs' single
block ``qkv_lora`` covers only the q, k, v rows of ``linear1``, and its ``proj_lora`` has ``linear2``'s input). Keys
reach these names after their prefix is stripped (``lora_unet_`` underscored, ``diffusion_model.`` /
``transformer.`` / ``base_model.model.`` dotted); the index adds the underscored spelling of every name itself.
"""

from __future__ import annotations

from torch import nn

#: (BFL name, diffusers path(s), op)
Entry = tuple[str, tuple[str, ...], str]

TOP_LEVEL: list[Entry] = [
    ("img_in", ("x_embedder",), "direct"),
    ("img_in.proj", ("x_embedder",), "direct"),  # OneTrainer "OMI" spelling
    ("txt_in", ("context_embedder",), "direct"),
    ("time_in.in_layer", ("time_text_embed.timestep_embedder.linear_1",), "direct"),
    ("time_in.out_layer", ("time_text_embed.timestep_embedder.linear_2",), "direct"),
    ("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",), "direct"),
    ("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",), "direct"),
    # only [dev]-like models (guidance_embeds=True) have these; entries whose targets are missing are dropped
    ("guidance_in.in_layer", ("time_text_embed.guidance_embedder.linear_1",), "direct"),
    ("guidance_in.out_layer", ("time_text_embed.guidance_embedder.linear_2",), "direct"),
    ("final_layer.linear", ("proj_out",), "direct"),
    ("final_layer.adaLN_modulation.1", ("norm_out.linear",), "swap"),
]

#: kohya-style key prefixes of the Flux text encoders -> pipeline component. sd-scripts writes ``lora_te1_`` (CLIP-L)
#: and ``lora_te3_`` (T5-XXL); OneTrainer writes ``lora_te2_`` for T5. Flux pipelines hold T5 as ``text_encoder_2``.
KOHYA_TEXT_ENCODERS: dict[str, str] = {
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_te3_": "text_encoder_2",
}


def is_flux(model: nn.Module) -> bool:
    """Whether ``model`` looks like diffusers' (Flux.1) ``FluxTransformer2DModel``."""
    singles = getattr(model, "single_transformer_blocks", None)
    if singles is None or not hasattr(model, "transformer_blocks") or not hasattr(model, "x_embedder"):
        return False
    if not hasattr(model, "context_embedder") or not hasattr(model, "norm_out"):
        return False
    return len(singles) == 0 or hasattr(singles[0], "proj_mlp")


def double_block_entries(i: int) -> list[Entry]:
    """The BFL names of double block ``i`` (``double_blocks.{i}``) and their diffusers targets."""
    b, d = f"transformer_blocks.{i}", f"double_blocks.{i}"
    qkv = (f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v")
    cqkv = (f"{b}.attn.add_q_proj", f"{b}.attn.add_k_proj", f"{b}.attn.add_v_proj")
    out: list[Entry] = [
        (f"{d}.img_attn.qkv", qkv, "split"),
        (f"{d}.txt_attn.qkv", cqkv, "split"),
        (f"{d}.img_attn.proj", (f"{b}.attn.to_out.0",), "direct"),
        (f"{d}.txt_attn.proj", (f"{b}.attn.to_add_out",), "direct"),
        (f"{d}.img_mlp.0", (f"{b}.ff.net.0.proj",), "direct"),
        (f"{d}.img_mlp.2", (f"{b}.ff.net.2",), "direct"),
        (f"{d}.txt_mlp.0", (f"{b}.ff_context.net.0.proj",), "direct"),
        (f"{d}.txt_mlp.2", (f"{b}.ff_context.net.2",), "direct"),
        (f"{d}.img_mod.lin", (f"{b}.norm1.linear",), "direct"),
        (f"{d}.txt_mod.lin", (f"{b}.norm1_context.linear",), "direct"),
        # XLabs: lora1 = image stream, lora2 = text stream
        (f"{d}.processor.qkv_lora1", qkv, "split"),
        (f"{d}.processor.proj_lora1", (f"{b}.attn.to_out.0",), "direct"),
        (f"{d}.processor.qkv_lora2", cqkv, "split"),
        (f"{d}.processor.proj_lora2", (f"{b}.attn.to_add_out",), "direct"),
    ]
    # OneTrainer: q/k/v as separate sub-adapters of the fused projection (.qkv.0/.1/.2)
    for bfl, paths in ((f"{d}.img_attn.qkv", qkv), (f"{d}.txt_attn.qkv", cqkv)):
        out.extend((f"{bfl}.{k}", (p,), "direct") for k, p in enumerate(paths))
    return out


def single_block_entries(i: int) -> list[Entry]:
    """The BFL names of single block ``i`` (``single_blocks.{i}``) and their diffusers targets."""
    b, s = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
    qkv = (f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v")
    linear1 = (*qkv, f"{b}.proj_mlp")
    out: list[Entry] = [
        (f"{s}.linear1", linear1, "split"),
        (f"{s}.linear2", (f"{b}.proj_out",), "direct"),
        (f"{s}.modulation.lin", (f"{b}.norm.linear",), "direct"),
        # XLabs: qkv_lora covers linear1's q, k, v rows only; proj_lora has linear2's (attention + MLP) input
        (f"{s}.processor.qkv_lora", qkv, "split"),
        (f"{s}.processor.proj_lora", (f"{b}.proj_out",), "direct"),
        # the same keys as the attention-processor key parse names them (``qkv_lora.down.weight``: ``qkv`` + the
        # ``_lora.down.weight`` suffix of diffusers' old processors)
        (f"{s}.processor.qkv", qkv, "split"),
        (f"{s}.processor.proj", (f"{b}.proj_out",), "direct"),
    ]
    # OneTrainer: linear1 as q, k, v, mlp sub-adapters (.linear1.0/.1/.2/.3)
    out.extend((f"{s}.linear1.{k}", (p,), "direct") for k, p in enumerate(linear1))
    return out


def bfl_entries(model: nn.Module) -> list[Entry]:
    """Every BFL / kohya module name of the Flux transformer ``model``, with its diffusers target(s) and op.

    Entries are generated from the model's block counts; a caller drops those whose targets the model lacks (e.g. the
    guidance embedder of [schnell]).

    Example:
        >>> ("single_blocks.0.linear1", targets, "split") in bfl_entries(transformer)  # doctest: +SKIP
    """
    entries = list(TOP_LEVEL)
    for i in range(len(getattr(model, "transformer_blocks", []))):
        entries.extend(double_block_entries(i))
    for i in range(len(getattr(model, "single_transformer_blocks", []))):
        entries.extend(single_block_entries(i))
    return entries


def bfl_norm_params(model: nn.Module) -> list[tuple[str, str]]:
    """``(BFL parameter, diffusers parameter)`` for the q/k RMSNorm scales that Flux Control LoRAs carry.

    BFL stores them as ``double_blocks.{i}.img_attn.norm.query_norm.scale`` (etc.); diffusers has ``attn.norm_q``,
    ``norm_k`` (image stream / single blocks) and ``norm_added_q``, ``norm_added_k`` (text stream), each a ``.weight``.
    """
    out: list[tuple[str, str]] = []
    for i in range(len(getattr(model, "transformer_blocks", []))):
        d, b = f"double_blocks.{i}", f"transformer_blocks.{i}.attn"
        out += [
            (f"{d}.img_attn.norm.query_norm.scale", f"{b}.norm_q.weight"),
            (f"{d}.img_attn.norm.key_norm.scale", f"{b}.norm_k.weight"),
            (f"{d}.txt_attn.norm.query_norm.scale", f"{b}.norm_added_q.weight"),
            (f"{d}.txt_attn.norm.key_norm.scale", f"{b}.norm_added_k.weight"),
        ]
    for i in range(len(getattr(model, "single_transformer_blocks", []))):
        s, b = f"single_blocks.{i}", f"single_transformer_blocks.{i}.attn"
        out += [
            (f"{s}.norm.query_norm.scale", f"{b}.norm_q.weight"),
            (f"{s}.norm.key_norm.scale", f"{b}.norm_k.weight"),
        ]
    return out
