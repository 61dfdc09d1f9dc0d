"""``from_canonical``: canonical adapters -> a file in one layout, and the ONE PEFT ``LoraConfig`` builder.

The layouts' writers live with their layouts (:mod:`lorakit.formats.layouts`); this module checks the request, picks
the writer from the registry and hands it the family the caller named (writers that need one guess it otherwise).

PEFT config rule (:func:`peft_config`, used by the diffusers and PEFT writers and by ``lorakit.save``): ``r`` and
``lora_alpha`` are the most common rank and alpha; every module that differs gets a ``rank_pattern`` /
``alpha_pattern`` entry keyed ``"^" + re.escape(path)``. PEFT matches a pattern key ``k`` against a module name with
``re.match(rf"(.*\\.)?({k})$", name)``, so a bare path also hits every module whose path *ends* in it (Flux's
``proj_out`` and ``single_transformer_blocks.N.proj_out``); the anchored, escaped key matches that one module only.
diffusers builds its own patterns the same way (``^`` since PEFT #2419) and lorakit's reader applies PEFT's rule, so a
file reloads with identical per-module scales in both.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from torch import Tensor

from .. import families
from ..errors import FormatError, ShapeMismatchError
from ..kinds import AdapterKind
from . import registry
from .registry import Adapters


# ----------------------------------------------------------------------------------------------- PEFT LoraConfig
def pattern_key(path: str) -> str:
    """The ``rank_pattern`` / ``alpha_pattern`` key that matches module ``path`` only (see the module docstring)."""
    return "^" + re.escape(path)


def peft_describable(modules: Mapping[str, AdapterKind]) -> dict[str, AdapterKind]:
    """The modules one PEFT ``LoraConfig`` can describe: the kinds PEFT names (``peft_tensors()`` is not ``None``),
    without the DoRA ones when DoRA and plain modules are mixed (a config has one ``use_dora`` flag; a plain module
    under ``use_dora=True`` would get PEFT's initial magnitude, not its own delta). The rest keep LyCORIS names."""
    peft = {p: k for p, k in modules.items() if k.peft_tensors() is not None}
    dora = {p for p, k in peft.items() if "lora_magnitude_vector" in (k.peft_tensors() or {})}
    if dora and len(dora) < len(peft):
        return {p: k for p, k in peft.items() if p not in dora}
    return peft


def peft_config(modules: Mapping[str, AdapterKind], *, where: str = "", strict: bool = False) -> dict[str, object]:
    """``LoraConfig`` fields that make PEFT / diffusers apply exactly the scales of ``modules`` (path -> kind).

    Args:
        modules: one component's adapters.
        where: a name for messages (the component).
        strict: raise for modules the config cannot describe; otherwise describe the ones it can
            (:func:`peft_describable`) and leave the others out.

    Raises:
        FormatError: nothing to describe, or (``strict``) a kind PEFT's LoRA cannot express (LoHa, LoKr, full, Tucker,
            input-axis DoRA) or DoRA mixed with plain LoRA.
    """
    described = peft_describable(modules)
    if strict:
        for path, kind in modules.items():
            if path not in described:
                name = f"{where}.{path}" if where else path
                if kind.peft_tensors() is None:
                    raise FormatError(f"{name}: a {kind.kind_name} adapter cannot be described by a PEFT LoraConfig")
                raise FormatError(f"{where or 'adapter'}: mixes DoRA and plain LoRA modules; PEFT takes one use_dora flag")
    if not described:
        raise FormatError(f"{where or 'adapter'}: no module a PEFT LoraConfig can describe")
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    dora = bias = False
    for path, kind in described.items():
        tensors = kind.peft_tensors() or {}
        rank = kind.rank
        if rank is None:  # pragma: no cover - every PEFT-named kind has a rank
            raise FormatError(f"{path}: a {kind.kind_name} adapter without a rank cannot be described by a LoraConfig")
        ranks[path] = rank
        alphas[path] = float(kind.alpha) if kind.alpha is not None else float(rank)
        dora = dora or "lora_magnitude_vector" in tensors
        bias = bias or "lora_B.bias" in tensors
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": int(alpha) if alpha.is_integer() else alpha,
        "rank_pattern": {pattern_key(p): v for p, v in sorted(ranks.items()) if v != r},
        "alpha_pattern": {pattern_key(p): v for p, v in sorted(alphas.items()) if v != alpha},
        "target_modules": sorted(described),
        "use_dora": dora,
        "use_rslora": False,
        "lora_bias": bias,
        "lora_dropout": 0.0,
        "bias": "none",
        "init_lora_weights": True,
    }


# ----------------------------------------------------------------------------------------------- from_canonical
def _check(adapters: object) -> Adapters:
    if not isinstance(adapters, Mapping):
        raise FormatError(f"adapters must be {{component: {{module_path: kind}}}}, got {type(adapters).__name__}")
    out: dict[str, Mapping[str, AdapterKind]] = {}
    for comp, mods in adapters.items():
        if not isinstance(comp, str) or not isinstance(mods, Mapping):
            raise FormatError(f"adapters[{comp!r}] must be a mapping of module paths to kinds")
        for p, k in mods.items():
            if not isinstance(p, str) or not isinstance(k, AdapterKind):
                raise FormatError(f"adapters[{comp!r}][{p!r}] is not an adapter kind ({type(k).__name__})")
            try:
                k.check_tensors(f"adapters[{comp!r}][{p!r}]")
            except ShapeMismatchError as exc:  # a malformed kind is a bad request to the writer
                raise FormatError(f"cannot write {exc}") from exc
        out[comp] = mods
    return out


def from_canonical(
    adapters: Mapping[str, Mapping[str, AdapterKind]], to: str = "diffusers", *, family: str | None = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Write canonical adapters in a layout.

    Args:
        adapters: ``{component: {module_path: kind}}`` (what :func:`to_canonical` returns).
        to: ``"diffusers"``, ``"peft"`` (exactly one component) or ``"kohya"`` (``registry.writable()``).
        family: ``"sd1" | "sd2" | "sdxl" | "sd3" | "amused"`` (or a variant); for kohya it selects the key prefixes,
            the SGM UNet names (SDXL) and ``ss_base_model_version``. Guessed from the adapters when omitted (the
            base-model tag is then written only when one family fits).

    Returns:
        ``(state_dict, metadata)``; metadata values are strings (a safetensors header).

    Raises:
        FormatError: an unknown or read-only layout, an unknown family, adapters the layout cannot hold.

    Example:
        >>> sd, meta = from_canonical(conv.adapters, "kohya", family="sdxl")  # doctest: +SKIP
    """
    checked = _check(adapters)
    if not isinstance(to, str):
        raise FormatError(f"the layout must be a name ({', '.join(registry.writable())}), got {type(to).__name__}")
    layout = registry.get(to)
    if layout.writer is None:
        raise FormatError(f"layout {to!r} is read, not written (writable: {', '.join(registry.writable())})")
    if family is not None and not isinstance(family, str):
        raise FormatError(f"family must be a name such as 'sdxl', got {type(family).__name__}")
    return layout.writer(checked, families.get(family) if family else None)
