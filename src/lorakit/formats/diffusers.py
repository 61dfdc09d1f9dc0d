"""diffusers layouts: PEFT-style ``lora_A``/``lora_B`` with component prefixes, the intermediate ``.lora.down`` /
``.lora_linear_layer.`` layout, and the old attention-processor layout (``…processor.to_q_lora.down.weight``, with or
without the ``unet.`` prefix). formats.md §5.1-§5.3.
"""

from __future__ import annotations

from .keys import ATTNPROC, INTERMEDIATE, PEFT
from .registry import Convention, register

DIFFUSERS = register(
    Convention(
        name="diffusers",
        description="diffusers PEFT-style: <component>.<module>.lora_A/lora_B.weight (+ lora_B.bias, lora_magnitude_vector)",
        prefix_families=frozenset({"component"}),
        styles=frozenset({PEFT}),
        header_keys=("lora_adapter_metadata",),
    )
)

INTERMEDIATE_LAYOUT = register(
    Convention(
        name="diffusers-intermediate",
        description="diffusers training-script layout: <component>.<module>.lora.down/up.weight, .lora_linear_layer.down/up",
        prefix_families=frozenset({"component"}),
        styles=frozenset({INTERMEDIATE}),
    )
)

ATTN_PROCS = register(
    Convention(
        name="diffusers-attn-procs",
        description="old diffusers attention processors: [unet.]<block>.attn1.processor.to_q_lora.down.weight",
        prefix_families=frozenset({"component", "none"}),
        styles=frozenset({ATTNPROC}),
    )
)
