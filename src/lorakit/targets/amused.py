"""aMUSEd (``UVit2DModel`` + CLIPTextModelWithProjection).

The only producer known is diffusers' ``examples/amused/train_amused.py``: PEFT ``lora_A``/``lora_B`` keys with the
``transformer.`` / ``text_encoder.`` prefixes, ``target_modules=["to_q","to_k","to_v"]``, r=16, lora_alpha=32 by
default but **no alpha or metadata written**, so loaders (lorakit and diffusers alike) apply scale 1 (formats.md §9).
Module names are diffusers' own, so the generic index resolves them; this module only documents the facts.
"""

from __future__ import annotations

#: the training script's defaults (not stored in the files it writes)
TRAIN_SCRIPT_DEFAULTS: dict[str, object] = {"r": 16, "lora_alpha": 32, "target_modules": ["to_q", "to_k", "to_v"]}
