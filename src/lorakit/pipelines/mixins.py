"""The family mixins: diffusers' method signatures (names, parameters, defaults) with one-line bodies.

Everything they do is :class:`~lorakit.pipelines.api.LoraBaseMixin`'s; a family contributes its components
(:mod:`lorakit.families`) and the signatures of its ``load_lora_into_*`` / ``save_lora_weights``, which differ in
diffusers from family to family.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..families import AMUSED, FLUX, SD1, SD3, SDXL
from .api import LoraBaseMixin

__all__ = [
    "AmusedLoraLoaderMixin",
    "FluxLoraLoaderMixin",
    "SD3LoraLoaderMixin",
    "StableDiffusionLoraLoaderMixin",
    "StableDiffusionXLLoraLoaderMixin",
]


class _UNetMixin(LoraBaseMixin):
    unet_name = "unet"
    text_encoder_name = "text_encoder"

    @classmethod
    def load_lora_into_unet(
        cls,
        state_dict,
        network_alphas,
        unet,
        adapter_name=None,
        _pipeline=None,
        low_cpu_mem_usage=False,
        hotswap: bool = False,
        metadata=None,
    ) -> None:
        """Load the LoRA layers of ``state_dict`` meant for ``unet``.

        Args:
            state_dict: a LoRA state dict (keys prefixed with ``unet.`` or indexed directly into the UNet; any
                supported format).
            network_alphas: alphas returned by :meth:`lora_state_dict` (or ``None``).
            unet: the ``UNet2DConditionModel`` (a bare model works).
            adapter_name: name (default ``default_{i}``).
            _pipeline: the pipeline, for default names across components.
            low_cpu_mem_usage: accepted for compatibility (no effect).
            hotswap: replace adapter ``adapter_name`` in place.
            metadata: the file's header metadata.
        """
        cls._lorakit_load_one(cls.unet_name, unet, state_dict, network_alphas, adapter_name, _pipeline, hotswap, metadata)


class _PromptScaleMixin(LoraBaseMixin):
    """``encode_prompt(..., lora_scale=s)`` scales the text encoders' adapters for that call only."""

    def encode_prompt(self, *args: Any, **kwargs: Any) -> Any:
        parent = super().encode_prompt  # type: ignore[misc]
        scale = kwargs.get("lora_scale")
        if scale is None and args:
            try:
                scale = inspect.signature(parent).bind_partial(*args, **kwargs).arguments.get("lora_scale")
            except TypeError:
                scale = None
        if scale is None:
            return parent(*args, **kwargs)
        family = self._lorakit_family
        comps = [c for c in self._lora_loadable_modules if family is None or c != family.denoiser]
        with self._lorakit_set().scaled(comps, scale):
            return parent(*args, **kwargs)


class StableDiffusionLoraLoaderMixin(_PromptScaleMixin, _UNetMixin):
    """Load LoRA layers into Stable Diffusion ``UNet2DConditionModel`` and ``CLIPTextModel``."""

    _lora_loadable_modules = list(SD1.components)
    _lorakit_family = SD1

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        unet_lora_layers: dict[str, nn.Module | torch.Tensor] | None = None,
        text_encoder_lora_layers: dict[str, nn.Module | torch.Tensor] | None = None,
        is_main_process: bool = True,
        weight_name: str | None = None,
        save_function: Callable | None = None,
        safe_serialization: bool = True,
        unet_lora_adapter_metadata=None,
        text_encoder_lora_adapter_metadata=None,
    ) -> None:
        """Save the LoRA parameters corresponding to the UNet and text encoder (diffusers layout).

        Args:
            save_directory: created if missing.
            unet_lora_layers: state dict (or modules) of the UNet's LoRA layers, keys without the ``unet.`` prefix.
            text_encoder_lora_layers: the same for the text encoder.
            is_main_process: only the main process writes.
            weight_name: file name (default ``pytorch_lora_weights.safetensors``).
            save_function: replaces the writer.
            safe_serialization: safetensors (default) or pickle.
            unet_lora_adapter_metadata: LoraConfig fields for the UNet (written to the header).
            text_encoder_lora_adapter_metadata: the same for the text encoder.
        """
        cls._lorakit_save(
            save_directory,
            {"unet": unet_lora_layers, "text_encoder": text_encoder_lora_layers},
            is_main_process,
            weight_name,
            save_function,
            safe_serialization,
            {"unet": unet_lora_adapter_metadata, "text_encoder": text_encoder_lora_adapter_metadata},
        )


class StableDiffusionXLLoraLoaderMixin(_PromptScaleMixin, _UNetMixin):
    """Load LoRA layers into Stable Diffusion XL ``UNet2DConditionModel``, ``CLIPTextModel`` and
    ``CLIPTextModelWithProjection``."""

    _lora_loadable_modules = list(SDXL.components)
    _lorakit_family = SDXL

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        unet_lora_layers: dict[str, nn.Module | torch.Tensor] | None = None,
        text_encoder_lora_layers: dict[str, nn.Module | torch.Tensor] | None = None,
        text_encoder_2_lora_layers: dict[str, nn.Module | torch.Tensor] | None = None,
        is_main_process: bool = True,
        weight_name: str | None = None,
        save_function: Callable | None = None,
        safe_serialization: bool = True,
        unet_lora_adapter_metadata=None,
        text_encoder_lora_adapter_metadata=None,
        text_encoder_2_lora_adapter_metadata=None,
    ) -> None:
        """Save the LoRA parameters corresponding to the UNet and the two text encoders (diffusers layout).

        Args: as :meth:`StableDiffusionLoraLoaderMixin.save_lora_weights`, plus ``text_encoder_2_lora_layers`` /
        ``text_encoder_2_lora_adapter_metadata``.
        """
        cls._lorakit_save(
            save_directory,
            {"unet": unet_lora_layers, "text_encoder": text_encoder_lora_layers, "text_encoder_2": text_encoder_2_lora_layers},
            is_main_process,
            weight_name,
            save_function,
            safe_serialization,
            {
                "unet": unet_lora_adapter_metadata,
                "text_encoder": text_encoder_lora_adapter_metadata,
                "text_encoder_2": text_encoder_2_lora_adapter_metadata,
            },
        )


class SD3LoraLoaderMixin(_PromptScaleMixin, LoraBaseMixin):
    """Load LoRA layers into ``SD3Transformer2DModel``, ``CLIPTextModelWithProjection`` (×2) and, when the file has
    entries for it, the T5 ``text_encoder_3``. Specific to the StableDiffusion3 pipelines."""

    _lora_loadable_modules = list(SD3.components)
    _lorakit_family = SD3
    _lorakit_returns_alphas = False
    transformer_name = "transformer"
    text_encoder_name = "text_encoder"

    @classmethod
    def load_lora_into_transformer(
        cls,
        state_dict,
        transformer,
        adapter_name=None,
        _pipeline=None,
        low_cpu_mem_usage=False,
        hotswap: bool = False,
        metadata=None,
    ) -> None:
        """Load the LoRA layers of ``state_dict`` meant for ``transformer`` (an ``SD3Transformer2DModel``).

        Args:
            state_dict: a LoRA state dict (``transformer.`` keys or keys indexed directly into the model; any
                supported format, alphas included).
            transformer: the transformer (a bare model works).
            adapter_name: name (default ``default_{i}``).
            _pipeline: the pipeline, for default names across components.
            low_cpu_mem_usage: accepted for compatibility (no effect).
            hotswap: replace adapter ``adapter_name`` in place.
            metadata: the file's header metadata.
        """
        cls._lorakit_load_one(cls.transformer_name, transformer, state_dict, None, adapter_name, _pipeline, hotswap, metadata)

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        transformer_lora_layers: dict[str, nn.Module | torch.Tensor] | None = None,
        text_encoder_lora_layers: dict[str, nn.Module | torch.Tensor] | None = None,
        text_encoder_2_lora_layers: dict[str, nn.Module | torch.Tensor] | None = None,
        is_main_process: bool = True,
        weight_name: str | None = None,
        save_function: Callable | None = None,
        safe_serialization: bool = True,
        transformer_lora_adapter_metadata=None,
        text_encoder_lora_adapter_metadata=None,
        text_encoder_2_lora_adapter_metadata=None,
        text_encoder_3_lora_layers: dict[str, nn.Module | torch.Tensor] | None = None,
    ) -> None:
        """Save the LoRA parameters of the transformer and the text encoders (diffusers layout).

        Args: as :meth:`StableDiffusionLoraLoaderMixin.save_lora_weights` with ``transformer_lora_layers``; lorakit
        adds ``text_encoder_3_lora_layers`` (T5).
        """
        cls._lorakit_save(
            save_directory,
            {
                "transformer": transformer_lora_layers,
                "text_encoder": text_encoder_lora_layers,
                "text_encoder_2": text_encoder_2_lora_layers,
                "text_encoder_3": text_encoder_3_lora_layers,
            },
            is_main_process,
            weight_name,
            save_function,
            safe_serialization,
            {
                "transformer": transformer_lora_adapter_metadata,
                "text_encoder": text_encoder_lora_adapter_metadata,
                "text_encoder_2": text_encoder_2_lora_adapter_metadata,
            },
        )


class AmusedLoraLoaderMixin(LoraBaseMixin):
    """Load LoRA layers into the aMUSEd ``UVit2DModel`` and ``CLIPTextModelWithProjection`` (works on
    ``AmusedPipeline`` and its img2img / inpaint variants through :func:`attach`)."""

    _lora_loadable_modules = list(AMUSED.components)
    _lorakit_family = AMUSED
    transformer_name = "transformer"
    text_encoder_name = "text_encoder"

    @classmethod
    def load_lora_into_transformer(
        cls,
        state_dict,
        network_alphas,
        transformer,
        adapter_name=None,
        _pipeline=None,
        low_cpu_mem_usage=False,
        hotswap: bool = False,
        metadata=None,
    ) -> None:
        """Load the LoRA layers of ``state_dict`` meant for ``transformer`` (a ``UVit2DModel``).

        Args:
            state_dict: a LoRA state dict (``transformer.`` keys or keys indexed directly into the model).
            network_alphas: alphas returned by :meth:`lora_state_dict` (or ``None``).
            transformer: the transformer (a bare model works).
            adapter_name: name (default ``default_{i}``).
            _pipeline: the pipeline, for default names across components.
            low_cpu_mem_usage: accepted for compatibility (no effect).
            hotswap: replace adapter ``adapter_name`` in place.
            metadata: the file's header metadata.
        """
        cls._lorakit_load_one(
            cls.transformer_name, transformer, state_dict, network_alphas, adapter_name, _pipeline, hotswap, metadata
        )

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        text_encoder_lora_layers: dict[str, nn.Module | torch.Tensor] | None = None,
        transformer_lora_layers: dict[str, nn.Module | torch.Tensor] | None = None,
        is_main_process: bool = True,
        weight_name: str | None = None,
        save_function: Callable | None = None,
        safe_serialization: bool = True,
    ) -> None:
        """Save the LoRA parameters of the transformer and the text encoder (diffusers layout)."""
        cls._lorakit_save(
            save_directory,
            {"transformer": transformer_lora_layers, "text_encoder": text_encoder_lora_layers},
            is_main_process,
            weight_name,
            save_function,
            safe_serialization,
        )


class FluxLoraLoaderMixin(_PromptScaleMixin, LoraBaseMixin):
    """Load LoRA layers into ``FluxTransformer2DModel``, ``CLIPTextModel`` and, when the file has entries for it,
    the T5 ``text_encoder_2``. Specific to the Flux.1 pipelines (text2img, img2img, inpaint, Fill, Kontext, Control,
    ControlNet, ... through :func:`attach`)."""

    _lora_loadable_modules = list(FLUX.components)
    _lorakit_family = FLUX
    _lorakit_returns_alphas = False
    transformer_name = "transformer"
    text_encoder_name = "text_encoder"

    @classmethod
    def lora_state_dict(
        cls,
        pretrained_model_name_or_path_or_dict: str | dict[str, torch.Tensor],
        return_alphas: bool = False,
        **kwargs: Any,
    ):
        """Return the state dict of a LoRA file (keys unchanged: lorakit converts at load time).

        Args:
            pretrained_model_name_or_path_or_dict: a Hub repository id, a folder, a file or a state dict.
            return_alphas: also return the scalar ``*.alpha`` entries, split off the state dict as
                ``network_alphas`` (``None`` when there are none); otherwise they stay in the state dict.
            **kwargs: the reading options of :meth:`LoraBaseMixin.lora_state_dict` and ``return_lora_metadata``.

        Returns:
            ``state_dict``, or a tuple ``(state_dict[, network_alphas][, metadata])`` as diffusers' Flux loader.
        """
        return cls._lorakit_state_dict(pretrained_model_name_or_path_or_dict, return_alphas, kwargs)

    @classmethod
    def load_lora_into_transformer(
        cls,
        state_dict,
        network_alphas,
        transformer,
        adapter_name=None,
        metadata=None,
        _pipeline=None,
        low_cpu_mem_usage=False,
        hotswap: bool = False,
    ) -> None:
        """Load the LoRA layers of ``state_dict`` meant for ``transformer`` (a ``FluxTransformer2DModel``).

        Args:
            state_dict: a LoRA state dict (``transformer.`` keys, BFL / kohya / XLabs names, or keys indexed
                directly into the model; any supported format).
            network_alphas: alphas returned by :meth:`lora_state_dict` (or ``None``).
            transformer: the transformer (a bare model works).
            adapter_name: name (default ``default_{i}``).
            metadata: the file's header metadata.
            _pipeline: the pipeline, for default names across components.
            low_cpu_mem_usage: accepted for compatibility (no effect).
            hotswap: replace adapter ``adapter_name`` in place.
        """
        cls._lorakit_load_one(
            cls.transformer_name, transformer, state_dict, network_alphas, adapter_name, _pipeline, hotswap, metadata
        )

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        transformer_lora_layers: dict[str, nn.Module | torch.Tensor] | None = None,
        text_encoder_lora_layers: dict[str, nn.Module | torch.Tensor] | None = None,
        is_main_process: bool = True,
        weight_name: str | None = None,
        save_function: Callable | None = None,
        safe_serialization: bool = True,
        transformer_lora_adapter_metadata=None,
        text_encoder_lora_adapter_metadata=None,
        text_encoder_2_lora_layers: dict[str, nn.Module | torch.Tensor] | None = None,
        text_encoder_2_lora_adapter_metadata=None,
    ) -> None:
        """Save the LoRA parameters of the transformer and the text encoders (diffusers layout).

        Args: as :meth:`StableDiffusionLoraLoaderMixin.save_lora_weights` with ``transformer_lora_layers``; lorakit
        adds ``text_encoder_2_lora_layers`` / ``text_encoder_2_lora_adapter_metadata`` (T5).
        """
        cls._lorakit_save(
            save_directory,
            {
                "transformer": transformer_lora_layers,
                "text_encoder": text_encoder_lora_layers,
                "text_encoder_2": text_encoder_2_lora_layers,
            },
            is_main_process,
            weight_name,
            save_function,
            safe_serialization,
            {
                "transformer": transformer_lora_adapter_metadata,
                "text_encoder": text_encoder_lora_adapter_metadata,
                "text_encoder_2": text_encoder_2_lora_adapter_metadata,
            },
        )

    def fuse_lora(
        self,
        components: list[str] = ["transformer"],  # noqa: B006 - diffusers' Flux default; never mutated
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Fuse the LoRA parameters into the weights; as :meth:`LoraBaseMixin.fuse_lora`, but by default into the
        transformer only (diffusers' Flux default; pass ``components=[]`` for every component)."""
        LoraBaseMixin.fuse_lora(self, components, lora_scale, safe_fusing, adapter_names, **kwargs)

    def unload_lora_weights(self, reset_to_overwritten_params=False) -> None:
        """Unload every adapter (see :meth:`LoraBaseMixin.unload_lora_weights`).

        Args:
            reset_to_overwritten_params: accepted for compatibility: lorakit never overwrites parameters (it refuses
                the Control LoRAs that widen ``x_embedder`` in diffusers), so there is nothing to reset.
        """
        LoraBaseMixin.unload_lora_weights(self)


#: loader name (``Family.loader``) -> its mixin
MIXINS: dict[str, type[LoraBaseMixin]] = {
    "sd": StableDiffusionLoraLoaderMixin,
    "sdxl": StableDiffusionXLLoraLoaderMixin,
    "sd3": SD3LoraLoaderMixin,
    "flux": FluxLoraLoaderMixin,
    "amused": AmusedLoraLoaderMixin,
}
