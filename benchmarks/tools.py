"""The two implementations under test, behind one small interface.

Both run the same diffusers pipeline API (``load_lora_weights``, ``fuse_lora``, ``unfuse_lora``, ``set_adapters``,
``unload_lora_weights``, ``disable_lora``): ``peft`` is diffusers' own implementation on PEFT (the reference),
``lorakit`` is the same pipeline after ``lorakit.attach(pipe)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

TOOLS = ("peft", "lorakit")
LABEL = {"peft": "diffusers + PEFT", "lorakit": "lorakit"}


class Tool:
    """One implementation driving one pipeline."""

    name = "base"

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    @staticmethod
    def preimport() -> None:
        """Import what the first load would import lazily (so peak-RSS figures measure the load, not imports)."""

    def components(self) -> dict[str, nn.Module]:
        return {
            k: v
            for k, v in self.pipe.components.items()
            if k in ("unet", "transformer", "text_encoder", "text_encoder_2") and isinstance(v, nn.Module)
        }

    def load(self, src: str | dict[str, torch.Tensor], name: str) -> None:
        self.pipe.load_lora_weights(src, adapter_name=name)

    def fuse(self, names: list[str], strategy: str | None = None) -> None:
        self.pipe.fuse_lora(adapter_names=names)

    def unfuse(self) -> None:
        self.pipe.unfuse_lora()

    def set_adapters(self, names: list[str], weights: list[float] | None = None) -> None:
        self.pipe.set_adapters(names, adapter_weights=weights)

    def disable(self) -> None:
        self.pipe.disable_lora()

    def enable(self) -> None:
        self.pipe.enable_lora()

    def unload(self) -> None:
        self.pipe.unload_lora_weights()

    def set_strategy(self, strategy: str) -> None:
        if strategy != "lowrank":
            raise ValueError(f"{self.name} has no unfused strategy {strategy!r}")

    def base_params(self, comp: str) -> Iterator[tuple[str, torch.Tensor]]:
        """(checkpoint key, tensor) of the component's own (non-adapter) parameters."""
        yield from getattr(self.pipe, comp).state_dict().items()


class PeftTool(Tool):
    name = "peft"

    @staticmethod
    def preimport() -> None:
        import peft  # noqa: F401
        import peft.tuners.lora  # noqa: F401
        from diffusers.loaders import peft as _dp  # noqa: F401
        from diffusers.utils import peft_utils  # noqa: F401

    def base_params(self, comp: str) -> Iterator[tuple[str, torch.Tensor]]:
        for k, v in getattr(self.pipe, comp).state_dict().items():
            if ".lora_" in k or "lora_magnitude" in k:
                continue
            yield k.replace(".base_layer.", "."), v


class LorakitTool(Tool):
    name = "lorakit"

    def __init__(self, pipe: Any) -> None:
        import lorakit

        super().__init__(lorakit.attach(pipe))

    @staticmethod
    def preimport() -> None:
        import lorakit
        import lorakit.formats  # noqa: F401
        import lorakit.io  # noqa: F401
        import lorakit.pipelines  # noqa: F401

        lorakit.attach  # noqa: B018

    def set_strategy(self, strategy: str) -> None:
        from lorakit import get_manager

        for comp in self.components().values():
            mgr = get_manager(comp, create=False)
            if mgr is not None:
                mgr.set_unfused_strategy(strategy)

    def fuse(self, names: list[str], strategy: str | None = None) -> None:
        extra = {} if strategy is None else {"fuse_strategy": strategy}
        self.pipe.fuse_lora(adapter_names=names, **extra)


def make_tool(name: str, pipe: Any) -> Tool:
    return {"peft": PeftTool, "lorakit": LorakitTool}[name](pipe)


def restored_check(tool: Tool, model_dir: str, only: str | None = None) -> dict[str, Any]:
    """Compare every base parameter with the saved original (safetensors, mmapped): max |Δ| and bit-identity."""
    from safetensors import safe_open

    max_diff = 0.0
    identical = True
    checked = 0
    for comp in tool.components():
        folder = os.path.join(model_dir, comp)
        if not os.path.isdir(folder):  # a tiny component the benchmark never saved (Flux's text encoders)
            continue
        files = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
        handles = [safe_open(os.path.join(folder, f), "pt") for f in files]
        index = {k: h for h in handles for k in h.keys()}
        for key, value in tool.base_params(comp):
            h = index.get(key)
            if h is None or (only is not None and only not in key):
                continue
            orig = h.get_tensor(key).to(value.device, value.dtype)
            checked += 1
            if not torch.equal(orig, value):
                identical = False
                max_diff = max(max_diff, float((orig.float() - value.float()).abs().max()))
    return {"max_abs": max_diff, "identical": identical, "checked": checked}
