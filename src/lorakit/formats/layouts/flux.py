"""Flux.1 layouts named after BFL's reference model (lorakit reads them, it does not write them), and the refusal of
Flux Control LoRAs.

* ``flux-bfl``: BFL module names (``double_blocks.0.img_attn.qkv``, ``single_blocks.0.linear1``, ``img_in``,
  ``final_layer.adaLN_modulation.1``, ...) under ``transformer.`` (ai-toolkit, OneTrainer's BFL export with
  ``qkv.0/1/2`` and ``linear1.0-3``), ``base_model.model.`` (fal's Kontext trainer) or no prefix (BFL's own files),
  with PEFT (``lora_A``/``lora_B``) or kohya (``lora_down``/``lora_up`` + ``.alpha``) suffixes. The same names under
  ``lora_unet_`` (kohya sd-scripts) are the ``kohya`` layout's, under ``diffusion_model.`` ComfyUI's (``comfyui``).
* ``xlabs``: XLabs' attention-processor LoRAs (``double_blocks.0.processor.qkv_lora1.down.weight``; ``lora1`` is the
  image stream, ``lora2`` the text stream; single blocks ``processor.qkv_lora`` / ``proj_lora``), no alphas (scale 1).

:func:`control_lora` recognises Flux Control LoRAs (FLUX.1-Canny-dev-lora / Depth-dev-lora and diffusers' conversion of
them): they widen ``x_embedder``'s input from 64 to 128 channels (the control image's latents) and replace the q/k
RMSNorm scales of every block. lorakit never changes a module's shape or overwrites a parameter (adapters are hooks
and exact, reversible fuses), so such a file is refused with :class:`~lorakit.errors.ControlLoRAError` naming why,
before anything is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from ...targets import ModuleIndex
from ..keys import ATTNPROC, INTERMEDIATE, KOHYA, PEFT
from ..registry import Layout

#: BFL module names of the Flux transformer (the processor names are XLabs')
BFL_NAMES = (
    r"(double_blocks|single_blocks)[._]\d+[._](?!processor)"
    r"|(img_in|txt_in|time_in|vector_in|guidance_in|final_layer)([._]|$)"
)

FLUX_BFL = Layout(
    name="flux-bfl",
    description="Flux BFL names (double_blocks / single_blocks / img_in / final_layer) under transformer., "
    "base_model.model. (fal Kontext) or no prefix (BFL Control LoRAs), lora_A/B or lora_down/up",
    prefix_families=frozenset({"component", "peft", "none"}),
    styles=frozenset({PEFT, KOHYA}),
    names=BFL_NAMES,
)

XLABS = Layout(
    name="xlabs",
    description="XLabs Flux processors: double_blocks.N.processor.qkv_lora1/proj_lora1/qkv_lora2/proj_lora2, "
    "single_blocks.N.processor.qkv_lora/proj_lora, .down/.up.weight, no alpha",
    prefix_families=frozenset({"none"}),
    styles=frozenset({INTERMEDIATE, ATTNPROC}),
    names=r"(double_blocks|single_blocks)\.\d+\.processor\.",
)

LAYOUTS: tuple[Layout, ...] = (FLUX_BFL, XLABS)

#: q/k RMSNorm replacements of Control LoRAs: BFL ``…img_attn.norm.query_norm.scale``, diffusers ``…attn.norm_q.weight``
_NORM_KEY = re.compile(r"(^|[._])(query_norm|key_norm)\.scale$|[._]attn\.(norm_q|norm_k|norm_added_q|norm_added_k)\.weight$")
#: the input-side LoRA factor of the patch embedder (BFL ``img_in``, diffusers ``x_embedder``)
_EMBEDDER_DOWN = re.compile(r"(^|[._])(img_in|x_embedder)([._]proj)?\.(lora_A|lora_down)(\.[\w-]+)?\.weight$")


def _flux_index(indexes: Mapping[str, ModuleIndex]) -> ModuleIndex | None:
    idx = indexes.get("transformer")
    if idx is None or "x_embedder" not in idx.modules or "single_transformer_blocks.0.proj_mlp" not in idx.modules:
        return None
    return idx


def control_lora(state_dict: Mapping[str, Tensor], indexes: Mapping[str, ModuleIndex]) -> str | None:
    """Why ``state_dict`` is a Flux Control LoRA that cannot load into the Flux transformer of ``indexes`` (``None``
    when it is not one, or the model is no Flux transformer)."""
    idx = _flux_index(indexes)
    if idx is None:
        return None
    width = idx.shape("x_embedder")[1]
    norms = [k for k in state_dict if _NORM_KEY.search(k)]
    wide = [(k, tuple(t.shape)) for k, t in state_dict.items() if _EMBEDDER_DOWN.search(k) and t.dim() == 2
            and t.shape[1] > width]
    if not norms and not wide:
        return None
    what = []
    if wide:
        key, shape = wide[0]
        what.append(f"widens x_embedder from {width} to {shape[1]} input channels ({key!r} is {shape})")
    if norms:
        what.append(f"replaces {len(norms)} q/k norm weight(s) (first: {norms[0]!r})")
    return (
        "a Flux Control LoRA (FLUX.1-Canny/Depth-dev-lora style): it " + " and ".join(what) + "; lorakit never "
        "changes a module's shape or overwrites parameters, so it does not load Control LoRAs (use the full "
        "FLUX.1-Canny-dev / Depth-dev transformer with FluxControlPipeline, or diffusers' own loader)"
    )
