"""SD / SDXL UNet: the SGM / LDM ("CompVis") <-> diffusers block map, derived from the model's own structure.

kohya SDXL files (and A1111 CompVis-named SD1 files) name UNet modules after the original LDM/SGM code:
``input_blocks.{n}.{0|1}``, ``middle_block.{0,1,2}``, ``output_blocks.{n}.{0|1|2}``, ``time_embed``, ``label_emb``,
``out``. The numbering depends on how many resnets each level has and which levels have attentions and samplers,
so instead of assuming ``layers_per_block=2`` the table is computed by walking ``down_blocks`` / ``mid_block`` /
``up_blocks`` of the actual model (or of the family's reference model on the meta device).
"""

from __future__ import annotations

from torch import nn

#: resnet leaf renames, diffusers -> SGM
RESNET_LEAVES: dict[str, str] = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

#: top-level modules, diffusers -> SGM
TOP_LEVEL: dict[str, str] = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def is_unet(model: nn.Module) -> bool:
    """Whether ``model`` has the UNet2DConditionModel block structure."""
    return all(hasattr(model, a) for a in ("down_blocks", "up_blocks", "mid_block", "conv_in"))


def _len(block: nn.Module, attr: str) -> int:
    seq = getattr(block, attr, None)
    return len(seq) if seq is not None else 0


def block_prefix_map(unet: nn.Module) -> dict[str, tuple[str, str]]:
    """diffusers block prefix -> (SGM prefix, block type) where type is "resnet", "attention" or "sampler"."""
    out: dict[str, tuple[str, str]] = {}
    n = 1  # input_blocks.0 is conv_in
    down_blocks = getattr(unet, "down_blocks", [])
    for i, block in enumerate(down_blocks):
        for j in range(_len(block, "resnets")):
            out[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{n}.0", "resnet")
            if j < _len(block, "attentions"):
                out[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{n}.1", "attention")
            n += 1
        if _len(block, "downsamplers"):
            out[f"down_blocks.{i}.downsamplers.0.conv"] = (f"input_blocks.{n}.0.op", "sampler")
            n += 1
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        k = 0
        n_res = _len(mid, "resnets")
        for j in range(n_res):
            out[f"mid_block.resnets.{j}"] = (f"middle_block.{k}", "resnet")
            k += 1
            if j < _len(mid, "attentions"):
                out[f"mid_block.attentions.{j}"] = (f"middle_block.{k}", "attention")
                k += 1
    n = 0
    for i, block in enumerate(getattr(unet, "up_blocks", [])):
        n_res = _len(block, "resnets")
        has_attn = _len(block, "attentions") > 0
        for j in range(n_res):
            out[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{n}.0", "resnet")
            if j < _len(block, "attentions"):
                out[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{n}.1", "attention")
            if j == n_res - 1 and _len(block, "upsamplers"):
                out[f"up_blocks.{i}.upsamplers.0.conv"] = (f"output_blocks.{n}.{2 if has_attn else 1}.conv", "sampler")
            n += 1
    return out


def sgm_name(path: str, prefixes: dict[str, tuple[str, str]]) -> str | None:
    """The SGM name of the diffusers module ``path`` (``None`` when it has none)."""
    if path in TOP_LEVEL:
        return TOP_LEVEL[path]
    parts = path.split(".")
    # block prefixes have 3 segments (down_blocks.i.resnets.j is 4; samplers end in .conv: 5)
    for cut in (5, 4, 3):
        if len(parts) < cut:
            continue
        head = ".".join(parts[:cut])
        hit = prefixes.get(head)
        if hit is None:
            continue
        sgm, kind = hit
        rest = parts[cut:]
        if kind == "sampler":
            return sgm if not rest else None
        if kind == "resnet":
            leaf = ".".join(rest)
            return f"{sgm}.{RESNET_LEAVES[leaf]}" if leaf in RESNET_LEAVES else None
        return ".".join([sgm, *rest]) if rest else sgm
    return None


def sgm_aliases(unet: nn.Module, paths: list[str]) -> dict[str, str]:
    """SGM name -> diffusers path for every path in ``paths`` that has one."""
    prefixes = block_prefix_map(unet)
    out: dict[str, str] = {}
    for p in paths:
        name = sgm_name(p, prefixes)
        if name is not None:
            out[name] = p
    return out
