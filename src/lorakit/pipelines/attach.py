"""``lorakit.attach(pipe)``: give an existing diffusers pipeline lorakit's LoRA methods."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

from torch import nn

from .. import families
from ..errors import UnsupportedPipelineError
from .api import STATE, LoraBaseMixin, pipeline_state
from .mixins import MIXINS

__all__ = ["attach", "mixin_for"]

_ATTACHED: dict[tuple[type, type], type] = {}
_ATTACH_LOCK = threading.Lock()


def mixin_for(pipe: Any) -> type[LoraBaseMixin] | None:
    """The lorakit mixin of ``pipe``'s family: the one whose diffusers mixin the pipeline derives from, else the one
    whose denoiser class only that family has (aMUSEd's pipelines never got diffusers' mixin)."""
    import diffusers.loaders

    loaders = {f.loader: f for f in reversed(list(families.FAMILIES.values()))}  # each loader's first family
    for loader, fam in loaders.items():
        dmixin = getattr(diffusers.loaders, fam.diffusers_mixin or "", None)
        if isinstance(dmixin, type) and isinstance(pipe, dmixin) and isinstance(getattr(pipe, fam.denoiser, None), nn.Module):
            return MIXINS[loader]
    for loader, fam in loaders.items():
        denoiser = getattr(pipe, fam.denoiser, None)
        owners = {f.loader for f in families.of_denoiser(type(denoiser).__name__)}
        if isinstance(denoiser, nn.Module) and owners == {loader}:
            return MIXINS[loader]
    return None


def _calling(call: Callable[..., Any]) -> Callable[..., Any]:
    """The pipeline's ``__call__`` (same signature and docs) telling lorakit about the call first: a running
    ``lorakit.per_sample`` context needs the number of prompts and images per prompt to map batch rows."""
    signature = inspect.signature(call)

    @functools.wraps(call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.__dict__.get(STATE) is not None and pipeline_state(self).plans:
            self._lorakit_before_call(signature.bind_partial(self, *args, **kwargs).arguments)
        return call(self, *args, **kwargs)

    return __call__


def attach(pipe: Any) -> Any:
    """Give an existing diffusers pipeline lorakit's LoRA methods; returns the same object.

    The instance's class is swapped for a subclass (created once per class, same ``__name__``) with the lorakit
    mixin of its family first in the MRO, so ``load_lora_weights``, ``set_adapters``, ``fuse_lora`` ... and the
    call-time scale kwargs run on lorakit's engine. Works for every pipeline of a family in
    :mod:`lorakit.families` (text2img, img2img, inpaint, ...), including ``AmusedPipeline``, which diffusers never
    gave a loader. Attaching twice is harmless.

    Args:
        pipe: a diffusers pipeline instance.

    Returns:
        ``pipe`` itself.

    Raises:
        UnsupportedPipelineError: the pipeline is not of a family lorakit knows.

    Example:
        >>> pipe = lorakit.attach(StableDiffusionXLPipeline.from_pretrained(...))  # doctest: +SKIP
        >>> pipe.load_lora_weights("pixel-art-xl.safetensors", adapter_name="pixel")  # doctest: +SKIP
    """
    if isinstance(pipe, LoraBaseMixin):
        return pipe
    mixin = mixin_for(pipe)
    if mixin is None:
        known = ", ".join(dict.fromkeys(f.display for f in families.FAMILIES.values()))
        raise UnsupportedPipelineError(f"lorakit.attach: {type(pipe).__name__} is not a pipeline of {known}")
    cls = type(pipe)
    with _ATTACH_LOCK:
        new_cls = _ATTACHED.get((cls, mixin))
        if new_cls is None:
            new_cls = type(
                cls.__name__,
                (mixin, cls),
                {
                    "__module__": cls.__module__,
                    "__qualname__": cls.__qualname__,
                    "_lorakit_base_class": cls,
                    "__call__": _calling(cls.__call__),
                },
            )
            _ATTACHED[(cls, mixin)] = new_cls
    pipe.__class__ = new_cls
    return pipe
