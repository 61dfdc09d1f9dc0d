"""``from_canonical``: canonical adapters -> a checkpoint layout ("diffusers", "peft", "kohya") plus header metadata.

* ``diffusers``: ``<component>.<path>.lora_A.weight`` / ``lora_B.weight`` (+ ``lora_B.bias``, ``lora_magnitude_vector``
  for output-axis DoRA on LoRA) and the diffusers ``lora_adapter_metadata`` header (a flat JSON of
  ``<component>.<LoraConfig field>``; ``r``/``lora_alpha`` = the most common values, ``rank_pattern``/``alpha_pattern``
  = anchored, escaped full module paths for the rest) so per-module alphas reload with identical scales in lorakit and
  in diffusers. Kinds PEFT cannot express (LoHa, LoKr, full, Tucker ``lora_mid``, input-axis DoRA) keep their
  LyCORIS suffixes on the dotted names (lorakit reloads them; diffusers does not).
* ``peft``: ``base_model.model.<path>.lora_A.weight`` for one component, with its LoraConfig as ``adapter_config``
  (JSON) in the metadata.
* ``kohya``: ``lora_unet_`` (SGM names for SDXL, diffusers-derived otherwise), ``lora_transformer_`` (SD3 / aMUSEd,
  OneTrainer's layout), ``lora_te_`` (one text encoder) or ``lora_te1_``/``lora_te2_``/``lora_te3_`` with transformers-4
  CLIP paths (``text_model.`` added), ``.alpha`` per module (alpha = rank written out when absent), LyCORIS names for the other
  kinds (``hada_*``, ``lokr_*``, ``diff``/``diff_b``, ``w_norm``/``b_norm`` for 1-D deltas, ``dora_scale``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping

import torch
from torch import Tensor

from ..errors import FormatError, LorakitError
from ..kinds import AdapterKind, DoRA, Full, LoHa, LoKr, LoRA
from ..targets import build_index, reference_components
from ..targets import clip as clip_targets
from ..targets.configs import FAMILIES

LAYOUTS = ("diffusers", "peft", "kohya")

_BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "sd3": "medium"}


def _alpha_tensor(value: float) -> Tensor:
    return torch.tensor(float(value), dtype=torch.float32)


def _is_conv(kind: AdapterKind) -> bool:
    if isinstance(kind, LoRA):
        return kind.down.dim() == 4
    if isinstance(kind, LoHa):
        return kind.t1 is not None
    if isinstance(kind, LoKr):
        return kind.t2 is not None or (kind.w2 is not None and kind.w2.dim() == 4)
    if isinstance(kind, DoRA):
        return _is_conv(kind.inner)
    return False


def _lycoris_tensors(kind: AdapterKind) -> dict[str, Tensor]:
    """LyCORIS/kohya suffix -> tensor (alpha included when it is not the default)."""
    out: dict[str, Tensor] = {}
    if isinstance(kind, DoRA):
        out.update(_lycoris_tensors(kind.inner))
        m = kind.magnitude.flatten()
        tail = (1, 1) if _is_conv(kind.inner) else ()
        out["dora_scale"] = m.reshape(-1, 1, *tail) if kind.axis == "out" else m.reshape(1, -1, *tail)
        return out
    if isinstance(kind, LoRA):
        out["lora_down.weight"] = kind.down
        out["lora_up.weight"] = kind.up
        if kind.mid is not None:
            out["lora_mid.weight"] = kind.mid
        if kind.bias is not None:
            out["lora_up.bias"] = kind.bias
    elif isinstance(kind, LoHa):
        out.update(hada_w1_a=kind.w1a, hada_w1_b=kind.w1b, hada_w2_a=kind.w2a, hada_w2_b=kind.w2b)
        if kind.t1 is not None and kind.t2 is not None:
            out.update(hada_t1=kind.t1, hada_t2=kind.t2)
    elif isinstance(kind, LoKr):
        for name, t in (("lokr_w1", kind.w1), ("lokr_w1_a", kind.w1a), ("lokr_w1_b", kind.w1b), ("lokr_w2", kind.w2),
                        ("lokr_w2_a", kind.w2a), ("lokr_w2_b", kind.w2b), ("lokr_t2", kind.t2)):
            if t is not None:
                out[name] = t
    elif isinstance(kind, Full):
        one_d = kind.diff is not None and kind.diff.dim() == 1
        if kind.diff is not None:
            out["w_norm" if one_d else "diff"] = kind.diff
        if kind.diff_b is not None:
            out["b_norm" if one_d else "diff_b"] = kind.diff_b
    else:
        raise FormatError(f"cannot write adapter kind {type(kind).__name__}")
    # always explicit (alpha = rank when absent): a missing .alpha would fall back to header values on reload
    alpha = getattr(kind, "alpha", None)
    rank = kind.rank
    if alpha is not None or rank is not None:
        out["alpha"] = _alpha_tensor(alpha if alpha is not None else rank)
    return out


def _peft_expressible(kind: AdapterKind) -> bool:
    if isinstance(kind, DoRA):
        return kind.axis == "out" and isinstance(kind.inner, LoRA) and kind.inner.mid is None
    return isinstance(kind, LoRA) and kind.mid is None


def _peft_tensors(kind: AdapterKind) -> dict[str, Tensor]:
    inner = kind.inner if isinstance(kind, DoRA) else kind
    assert isinstance(inner, LoRA)
    out = {"lora_A.weight": inner.down, "lora_B.weight": inner.up}
    if inner.bias is not None:
        out["lora_B.bias"] = inner.bias
    if isinstance(kind, DoRA):
        m = kind.magnitude.flatten()
        out["lora_magnitude_vector"] = m.reshape(1, -1, 1, 1) if inner.down.dim() == 4 else m
    return out


def _pattern(path: str) -> str:
    return "^" + re.escape(path)


def peft_config(modules: Mapping[str, AdapterKind]) -> dict[str, object]:
    """A LoraConfig-shaped dict reproducing each LoRA module's rank and alpha (PEFT pattern semantics)."""
    loras = {p: (k.inner if isinstance(k, DoRA) else k) for p, k in modules.items() if _peft_expressible(k)}
    ranks = {p: int(k.rank) for p, k in loras.items()}
    alphas = {p: float(k.alpha) if k.alpha is not None else float(k.rank) for p, k in loras.items()}
    r = Counter(ranks.values()).most_common(1)[0][0] if ranks else 4
    alpha = Counter(alphas.values()).most_common(1)[0][0] if alphas else float(r)
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {_pattern(p): v for p, v in ranks.items() if v != r},
        "alpha_pattern": {_pattern(p): v for p, v in alphas.items() if v != alpha},
        "target_modules": sorted(loras),
        "use_dora": any(isinstance(k, DoRA) for k in modules.values()),
        "use_rslora": False,
        "lora_bias": any(isinstance(k, LoRA) and k.bias is not None for k in loras.values()),
        "lora_dropout": 0.0,
        "bias": "none",
        "init_lora_weights": True,
    }


def _check(adapters: object) -> Mapping[str, Mapping[str, AdapterKind]]:
    if not isinstance(adapters, Mapping):
        raise FormatError(f"adapters must be {{component: {{module_path: kind}}}}, got {type(adapters).__name__}")
    for comp, mods in adapters.items():
        if not isinstance(comp, str) or not isinstance(mods, Mapping):
            raise FormatError(f"adapters[{comp!r}] must be a mapping of module paths to kinds")
        for p, k in mods.items():
            if not isinstance(p, str) or not isinstance(k, AdapterKind):
                raise FormatError(f"adapters[{comp!r}][{p!r}] is not an adapter kind ({type(k).__name__})")
    return adapters  # type: ignore[return-value]


def _to_diffusers(adapters: Mapping[str, Mapping[str, AdapterKind]]) -> tuple[dict[str, Tensor], dict[str, str]]:
    sd: dict[str, Tensor] = {}
    meta: dict[str, object] = {}
    for comp, mods in adapters.items():
        for path, kind in mods.items():
            tensors = _peft_tensors(kind) if _peft_expressible(kind) else _lycoris_tensors(kind)
            for suffix, t in tensors.items():
                sd[f"{comp}.{path}.{suffix}"] = t
        if any(_peft_expressible(k) for k in mods.values()):
            for fname, value in peft_config(mods).items():
                meta[f"{comp}.{fname}"] = value
    header = {"format": "pt"}
    if meta:
        header["lora_adapter_metadata"] = json.dumps(meta, indent=2, sort_keys=True)
    return sd, header


def _to_peft(adapters: Mapping[str, Mapping[str, AdapterKind]]) -> tuple[dict[str, Tensor], dict[str, str]]:
    comps = [c for c, m in adapters.items() if m]
    if len(comps) != 1:
        raise FormatError(
            f"the raw PEFT layout (base_model.model.) holds one component; got {', '.join(comps) or 'none'}: "
            "convert each component separately"
        )
    mods = adapters[comps[0]]
    sd: dict[str, Tensor] = {}
    for path, kind in mods.items():
        tensors = _peft_tensors(kind) if _peft_expressible(kind) else _lycoris_tensors(kind)
        for suffix, t in tensors.items():
            sd[f"base_model.model.{path}.{suffix}"] = t
    return sd, {"format": "pt", "adapter_config": json.dumps(peft_config(mods), sort_keys=True)}


def _guess_family(adapters: Mapping[str, Mapping[str, AdapterKind]]) -> str | None:
    if "unet" in adapters and "text_encoder_2" in adapters:
        return "sdxl"
    paths = adapters.get("unet", {})
    if any(p.startswith("add_embedding.") for p in paths):
        return "sdxl"
    return None


def _kohya_prefixes(adapters: Mapping[str, object], family: str | None) -> dict[str, str]:
    two_te = "text_encoder_2" in adapters or "text_encoder_3" in adapters or family in ("sdxl", "sd3")
    return {
        "unet": "lora_unet",
        "transformer": "lora_transformer",
        "text_encoder": "lora_te1" if two_te else "lora_te",
        "text_encoder_2": "lora_te2",
        "text_encoder_3": "lora_te3",
    }


def _to_kohya(
    adapters: Mapping[str, Mapping[str, AdapterKind]], family: str | None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    family = family or _guess_family(adapters)
    prefixes = _kohya_prefixes(adapters, family)
    sgm: dict[str, str] = {}
    if family == "sdxl" and "unet" in adapters:
        from ..targets import sd_unet

        unet = reference_components("sdxl")["unet"]
        idx = build_index(unet, "unet")
        sgm = {p: n for n, p in sd_unet.sgm_aliases(unet, list(idx.modules)).items()}
    sd: dict[str, Tensor] = {}
    for comp, mods in adapters.items():
        if comp not in prefixes:
            raise FormatError(f"the kohya layout has no prefix for component {comp!r}")
        for path, kind in mods.items():
            name = path
            if comp == "unet" and path in sgm:
                name = sgm[path]
            elif comp.startswith("text_encoder"):
                name = clip_targets.kohya_path(path)
            key = f"{prefixes[comp]}_{name.replace('.', '_')}"
            for suffix, t in _lycoris_tensors(kind).items():
                sd[f"{key}.{suffix}"] = t
    kinds = [k.inner if isinstance(k, DoRA) else k for m in adapters.values() for k in m.values()]
    ranks = Counter(int(k.rank) for k in kinds if k.rank is not None)
    alphas = Counter(float(a) for k in kinds if (a := getattr(k, "alpha", None)) is not None)
    meta = {
        "ss_network_module": "networks.lora" if all(isinstance(k, LoRA) for k in kinds) else "lycoris.kohya",
        "ss_network_dim": str(ranks.most_common(1)[0][0]) if ranks else "None",
        "ss_network_alpha": str(alphas.most_common(1)[0][0]) if alphas else "None",
    }
    if family in _BASE_MODEL_VERSION:
        meta["ss_base_model_version"] = _BASE_MODEL_VERSION[family]
    return sd, meta


def from_canonical(
    adapters: Mapping[str, Mapping[str, AdapterKind]], to: str = "diffusers", *, family: str | None = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Write canonical adapters in a checkpoint layout.

    Args:
        adapters: ``{component: {module_path: kind}}`` (what :func:`to_canonical` returns).
        to: ``"diffusers"``, ``"peft"`` (exactly one component) or ``"kohya"``.
        family: ``"sd1" | "sd2" | "sdxl" | "sd3" | "amused"``; for kohya it selects SGM UNet names (SDXL) and the
            ``lora_te1_``/``lora_te2_`` prefixes. Guessed from the adapters when omitted.

    Returns:
        ``(state_dict, metadata)``; metadata values are strings (a safetensors header).

    Example:
        >>> sd, meta = from_canonical(conv.adapters, "kohya", family="sdxl")  # doctest: +SKIP
    """
    try:
        return _from_canonical(adapters, to, family)
    except LorakitError:
        raise
    except (RuntimeError, IndexError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise FormatError(f"cannot write the adapters as {to!r} ({type(exc).__name__}: {exc})") from exc


def _from_canonical(
    adapters: Mapping[str, Mapping[str, AdapterKind]], to: str, family: str | None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    adapters = _check(adapters)
    if isinstance(family, str):
        family = family.lower()
    if family is not None and family not in FAMILIES:
        raise FormatError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
    if to == "diffusers":
        return _to_diffusers(adapters)
    if to == "peft":
        return _to_peft(adapters)
    if to == "kohya":
        return _to_kohya(adapters, family)
    raise FormatError(f"unknown layout {to!r} (known: {', '.join(LAYOUTS)})")
