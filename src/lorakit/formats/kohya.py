"""kohya / A1111 / LyCORIS / OneTrainer "flattened" layouts (formats.md §3, §4, §8).

``<prefix>_<module path with '.' -> '_'>.<suffix>``: ``lora_unet_`` (UNet, or the SD3 transformer with SAI MMDiT names),
``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` / ``lora_te3_`` (text encoders), ``lora_transformer_`` (OneTrainer legacy SD3),
``lycoris_`` (LyCORIS ``create_lycoris`` on diffusers names). Names may be diffusers-derived, CompVis/SGM
(``input_blocks``...), or SAI MMDiT (``joint_blocks``...); all are resolved through the model's alias index. Suffixes:
``lora_down/up/mid``, ``alpha``, ``dora_scale``, ``hada_*``, ``lokr_*``, ``diff``/``diff_b``, ``w_norm``/``b_norm``, and
the unsupported OFT/BOFT/(IA)^3/GLoRA tensors (reported by name).
"""

from __future__ import annotations

from .keys import KOHYA, PEFT
from .registry import Convention, register

KOHYA_LAYOUT = register(
    Convention(
        name="kohya",
        description="kohya/A1111/LyCORIS-in-sd-scripts: lora_unet_/lora_te[123]_ + underscored names, .alpha",
        prefix_families=frozenset({"kohya"}),
        styles=frozenset({KOHYA, PEFT}),
        header_keys=("ss_network_module", "ss_network_dim", "ss_network_alpha"),
    )
)

ONETRAINER = register(
    Convention(
        name="onetrainer",
        description="OneTrainer legacy SD3: lora_transformer_ + underscored diffusers names",
        prefix_families=frozenset({"onetrainer"}),
        styles=frozenset({KOHYA, PEFT}),
    )
)

LYCORIS = register(
    Convention(
        name="lycoris",
        description="LyCORIS create_lycoris: lycoris_ + underscored diffusers names",
        prefix_families=frozenset({"lycoris"}),
        styles=frozenset({KOHYA, PEFT}),
    )
)

KOHYA_OFT = register(
    Convention(
        name="kohya-oft",
        description="kohya OFT: oft_unet_ (not supported: orthogonal fine-tuning)",
        prefix_families=frozenset({"oft"}),
        styles=frozenset({KOHYA}),
        supported=False,
    )
)

EMBEDDING = register(
    Convention(
        name="embedding",
        description="embedded textual inversions bundle_emb.<token>.* (not adapter weights; not supported)",
        prefix_families=frozenset({"embedding"}),
        styles=frozenset({KOHYA, PEFT}),
        supported=False,
    )
)
