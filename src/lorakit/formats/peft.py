"""Raw PEFT (``PeftModel.save_pretrained``): ``base_model.model.<module>.lora_A.weight``; the ``adapter_config.json``
fields may be passed as metadata (formats.md §5.4). The keys name no component: they are resolved against every
component given, the denoiser first.
"""

from __future__ import annotations

from .keys import INTERMEDIATE, KOHYA, PEFT
from .registry import Convention, register

RAW_PEFT = register(
    Convention(
        name="peft",
        description="raw PEFT: base_model.model.<module>.lora_A/lora_B.weight (+ adapter_config.json fields)",
        prefix_families=frozenset({"peft"}),
        styles=frozenset({PEFT, INTERMEDIATE, KOHYA}),
        header_keys=("adapter_config", "peft_type"),
    )
)
