"""The :class:`Family` record: everything lorakit knows about one model family, as data.

A family file (``sd.py``, ``sdxl.py``, ...) builds one or more records; :mod:`lorakit.families` lists them. Nothing
outside ``families/`` names a family's components, classes, prefixes, header tags or block layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: (class name, constructor kwargs / config) of one component
ComponentSpec = tuple[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class BlockTable:
    """Where the numbered blocks of a denoiser are, for per-block ``set_adapters`` weights.

    Attributes:
        kind: ``"unet"`` (down / mid / up with per-layer lists) or ``"transformer"`` (numbered blocks).
        block_lists: attributes holding numbered blocks, in numbering order (Flux numbers its double blocks first,
            then its single blocks: ``block_19`` is the first single block of FLUX.1).
        named: extra named groups ``(("down", "down_block"), ...)``: name -> module-path prefix.
    """

    kind: str
    block_lists: tuple[str, ...] = ()
    named: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Evidence:
    """What in a file's header or key names points at this family (used by the one detector, ``detect.py``).

    Attributes:
        base_model_tags: ``ss_base_model_version`` values (lower case) or prefixes ending in ``*``.
        architectures: substrings of SAI ``modelspec.architecture``.
        network_modules: substrings of ``ss_network_module`` (e.g. ``"sd3"`` for ``networks.lora_sd3``).
        key_hints: module-name fragments (underscored) that only this family has.
        cross_attention_width: the UNet's cross-attention width (``attn2.to_k`` input), where it identifies the family.
        text_encoder_width: the first text encoder's width, where it identifies the family.
    """

    base_model_tags: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    network_modules: tuple[str, ...] = ()
    key_hints: tuple[str, ...] = ()
    cross_attention_width: int | None = None
    text_encoder_width: int | None = None


@dataclass(frozen=True, slots=True)
class Family:
    """One model family.

    Attributes:
        name: lorakit's id (``"sd1"``, ``"sd2"``, ``"sdxl"``, ``"sd3"``, ``"amused"``).
        display: the name shown to people (``"SD1"``, ``"aMUSEd"``).
        loader: which loader mixin serves it (``"sd"`` covers SD1 and SD2, as diffusers' does).
        denoiser: the denoiser component (``"unet"`` / ``"transformer"``).
        denoiser_class: its diffusers class name.
        text_encoders: the text-encoder components diffusers loads LoRA into, in order.
        extra_components: components lorakit loads beyond diffusers (SD3's T5), only when a file has keys for them.
        scale_kwarg: the denoiser forward kwarg that carries ``{"scale": s}``.
        diffusers_mixin: the diffusers loader mixin class name (``None``: diffusers has no loader for the pipelines).
        reference: real-size component configs (built on the meta device when no model is given).
        variants: other checkpoints of the family with other shapes, tried after ``reference`` when guessing.
        kohya_prefixes: component -> kohya key prefix (with the trailing ``_``).
        base_model_tag: the ``ss_base_model_version`` lorakit writes for this family.
        evidence: what identifies the family in files.
        blocks: the denoiser's block layout for per-block weights (``None``: scalars only).
        scope_aliases: component names that key prefixes of other families use for a component this family calls
            otherwise (Flux: the ``text_encoder_3`` of SD3-era T5 prefixes is its ``text_encoder_2``).
    """

    name: str
    display: str
    loader: str
    denoiser: str
    denoiser_class: str
    text_encoders: tuple[str, ...]
    scale_kwarg: str
    diffusers_mixin: str | None
    reference: dict[str, ComponentSpec]
    kohya_prefixes: dict[str, str]
    base_model_tag: str | None = None
    extra_components: tuple[str, ...] = ()
    variants: dict[str, dict[str, ComponentSpec]] = field(default_factory=dict)
    evidence: Evidence = field(default_factory=Evidence)
    blocks: BlockTable | None = None
    scope_aliases: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Family({self.name!r})"

    @property
    def components(self) -> tuple[str, ...]:
        """Every LoRA-loadable component: the denoiser, the text encoders, then the extra ones."""
        return (self.denoiser, *self.text_encoders, *self.extra_components)

    def spec(self, variant: str | None = None) -> dict[str, ComponentSpec]:
        """The component specs of the family's reference model or of one of its variants."""
        if variant is None or variant == self.name:
            return self.reference
        return self.variants[variant]
