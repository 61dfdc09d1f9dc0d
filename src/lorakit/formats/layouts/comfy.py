"""Dotted layouts with original-model names or kohya suffixes (formats.md §3.6, §8.1); lorakit reads them, it does
not write them.

* ComfyUI-native: ``diffusion_model.<SGM/MMDiT name>.lora_A.weight`` / ``.lora_down.weight``, ``text_encoders.clip_l.…``.
* OneTrainer "OMI": ``unet.input_blocks.4.1….lora_down.weight``, ``clip_l.…``, ``transformer.joint_blocks.N.x_block.attn.qkv.0…``.
* dotted diffusers names with kohya / LyCORIS suffixes (``transformer.….lokr_w1``, SimpleTuner-style).
* keys with no prefix at all (a module's own state dict), resolved against every component.
"""

from __future__ import annotations

from ..keys import INTERMEDIATE, KOHYA, PEFT, Prefix
from ..registry import Layout

COMFYUI = Layout(
    name="comfyui",
    description="ComfyUI-native: diffusion_model.<original name>, text_encoders.<clip>.transformer.<name>",
    prefix_families=frozenset({"comfy"}),
    styles=frozenset({KOHYA, PEFT, INTERMEDIATE}),
    prefixes=(
        *(Prefix(f"text_encoders.{clip}.{t}", comp, "dotted", "comfy")
          for clip, comp in (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2"), ("t5xxl", "text_encoder_3"))
          for t in ("transformer.", "")),
        Prefix("diffusion_model.", "denoiser", "dotted", "comfy"),
    ),
)

OMI = Layout(
    name="onetrainer-omi",
    description="OneTrainer OMI key sets: clip_l./clip_g./t5. (+ unet./transformer. with original names)",
    prefix_families=frozenset({"omi"}),
    styles=frozenset({KOHYA, PEFT}),
    prefixes=(
        Prefix("clip_l.", "text_encoder", "dotted", "omi"),
        Prefix("clip_g.", "text_encoder_2", "dotted", "omi"),
        Prefix("t5.", "text_encoder_3", "dotted", "omi"),
    ),
)

DOTTED_KOHYA = Layout(
    name="dotted-kohya",
    description="component-prefixed dotted names with kohya/LyCORIS suffixes (lora_down, hada_*, lokr_*, diff)",
    prefix_families=frozenset({"component"}),
    styles=frozenset({KOHYA}),
)

UNPREFIXED = Layout(
    name="unprefixed",
    description="no component prefix: <module>.lora_A.weight / .lora_down.weight (a module's own state dict)",
    prefix_families=frozenset({"none"}),
    styles=frozenset({PEFT, INTERMEDIATE, KOHYA}),
    header_config=True,
)

LAYOUTS: tuple[Layout, ...] = (COMFYUI, OMI, DOTTED_KOHYA, UNPREFIXED)
