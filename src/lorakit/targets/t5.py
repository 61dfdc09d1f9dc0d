"""T5 encoder (SD3 ``text_encoder_3``): kohya ``lora_te3_`` keys are underscored transformers paths.

``lora_te3_encoder_block_0_layer_0_SelfAttention_q`` is ``encoder.block.0.layer.0.SelfAttention.q``; the generic
underscored index of the model resolves them, nothing is renamed. Targets (formats.md §2.5):
``encoder.block.N.layer.0.SelfAttention.{q,k,v,o}`` and ``encoder.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wo}``.
"""

from __future__ import annotations

TARGET_LEAVES: tuple[str, ...] = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
