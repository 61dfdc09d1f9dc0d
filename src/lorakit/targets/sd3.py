"""SD3 MMDiT: the SAI (``joint_blocks``) <-> diffusers ``SD3Transformer2DModel`` map.

Fused ``qkv`` projections map onto three diffusers modules (``op="split"``: output rows split in equal chunks); the
``adaLN_modulation`` of the last (``context_pre_only``) context block and of ``final_layer`` store (shift, scale)
where diffusers has (scale, shift) (``op="swap"``: the two output halves are exchanged). formats.md §8.2/§8.3.
"""

from __future__ import annotations

from torch import nn

#: (SAI name, diffusers path(s), op)
Entry = tuple[str, tuple[str, ...], str]

TOP_LEVEL: list[Entry] = [
    ("x_embedder.proj", ("pos_embed.proj",), "direct"),
    ("context_embedder", ("context_embedder",), "direct"),
    ("t_embedder.mlp.0", ("time_text_embed.timestep_embedder.linear_1",), "direct"),
    ("t_embedder.mlp.2", ("time_text_embed.timestep_embedder.linear_2",), "direct"),
    ("y_embedder.mlp.0", ("time_text_embed.text_embedder.linear_1",), "direct"),
    ("y_embedder.mlp.2", ("time_text_embed.text_embedder.linear_2",), "direct"),
    ("final_layer.linear", ("proj_out",), "direct"),
    ("final_layer.adaLN_modulation.1", ("norm_out.linear",), "swap"),
]


def is_mmdit(model: nn.Module) -> bool:
    """Whether ``model`` looks like diffusers' SD3Transformer2DModel."""
    return hasattr(model, "transformer_blocks") and hasattr(model, "context_embedder") and hasattr(model, "pos_embed")


def block_entries(i: int, context_pre_only: bool) -> list[Entry]:
    b = f"transformer_blocks.{i}"
    x, c = f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block"
    qkv = (f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v")
    cqkv = (f"{b}.attn.add_q_proj", f"{b}.attn.add_k_proj", f"{b}.attn.add_v_proj")
    qkv2 = (f"{b}.attn2.to_q", f"{b}.attn2.to_k", f"{b}.attn2.to_v")
    out: list[Entry] = [
        (f"{x}.attn.qkv", qkv, "split"),
        (f"{c}.attn.qkv", cqkv, "split"),
        (f"{x}.attn2.qkv", qkv2, "split"),
        (f"{x}.attn.proj", (f"{b}.attn.to_out.0",), "direct"),
        (f"{c}.attn.proj", (f"{b}.attn.to_add_out",), "direct"),
        (f"{x}.attn2.proj", (f"{b}.attn2.to_out.0",), "direct"),
        (f"{x}.mlp.fc1", (f"{b}.ff.net.0.proj",), "direct"),
        (f"{x}.mlp.fc2", (f"{b}.ff.net.2",), "direct"),
        (f"{c}.mlp.fc1", (f"{b}.ff_context.net.0.proj",), "direct"),
        (f"{c}.mlp.fc2", (f"{b}.ff_context.net.2",), "direct"),
        (f"{x}.adaLN_modulation.1", (f"{b}.norm1.linear",), "direct"),
        (f"{c}.adaLN_modulation.1", (f"{b}.norm1_context.linear",), "swap" if context_pre_only else "direct"),
    ]
    # OneTrainer "OMI": q/k/v as separate sub-adapters of the fused projection (.qkv.0/.1/.2)
    for sai, paths in ((f"{x}.attn.qkv", qkv), (f"{c}.attn.qkv", cqkv), (f"{x}.attn2.qkv", qkv2)):
        out.extend((f"{sai}.{k}", (p,), "direct") for k, p in enumerate(paths))
    return out


def sai_entries(model: nn.Module) -> list[Entry]:
    """Every SAI name the model has, with its diffusers target(s) and op."""
    entries = list(TOP_LEVEL)
    for i, block in enumerate(getattr(model, "transformer_blocks", [])):
        pre_only = bool(getattr(block, "context_pre_only", False))
        entries.extend(block_entries(i, pre_only))
    return entries
