"""CLIP text encoders: module paths with and without transformers' ``text_model.`` prefix.

transformers 4.x has ``text_model.encoder.layers.N…`` in both CLIPTextModel and CLIPTextModelWithProjection;
transformers 5.x flattens CLIPTextModel (``encoder.layers.N…``) but not CLIPTextModelWithProjection. kohya files
always carry the 4.x path (``lora_te_text_model_encoder_layers_0_self_attn_q_proj``). Both spellings are indexed,
so a file from either world lands on either model.
"""

from __future__ import annotations

from torch import nn

PREFIX = "text_model."

#: old attention-processor names of CLIP self-attention (diffusers ``DIFFUSERS_OLD_TO_PEFT``)
ATTN_PROC_LEAVES: dict[str, str] = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


def text_model_variants(model: nn.Module, path: str) -> list[str]:
    """Other spellings of ``path`` (adds or strips ``text_model.``) for CLIP-like models."""
    if isinstance(getattr(model, "text_model", None), nn.Module):
        return [path[len(PREFIX) :]] if path.startswith(PREFIX) else []
    if type(model).__name__.startswith("CLIP") or (
        path.startswith(("encoder.layers.", "embeddings.", "final_layer_norm")) and not path.startswith("encoder.block.")
    ):
        return [PREFIX + path]
    return []


def kohya_path(path: str) -> str:
    """The transformers-4.x path kohya names CLIP modules after (``text_model.`` added where missing)."""
    if path.startswith(("encoder.layers.", "embeddings.", "final_layer_norm")):
        return PREFIX + path
    return path
