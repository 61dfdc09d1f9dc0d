"""The one family detector: of component models, of a file's header, of its key names and shapes.

Every caller (loading, ``inspect``, ``convert``, the CLI) asks here; the facts it weighs are the :class:`Evidence` of
each family file, so a new family is recognised by writing its record.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from . import FAMILIES, Family, of_denoiser

__all__ = ["Guess", "candidates", "from_header", "from_keys", "of_components"]

#: module-name words of the UNet families (diffusers and SGM spellings)
_UNET_WORDS = ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block", "conv_in")
#: the tensors whose second dimension is the module's input width (LoRA down factors, LoHa's w*_b factors)
_DOWN = re.compile(
    r"(lora_A(\.[\w-]+)?\.weight|lora\.down\.weight|lora_linear_layer\.down\.weight|lora_down\.weight|_lora\.down\.weight"
    r"|hada_w[12]_b)$"
)
_CROSS_KV = re.compile(r"attn2[._](processor[._])?to_[kv][._]")
_TE_Q = re.compile(r"self_attn[._](processor[._])?(q_proj|to_q)")
_TE_PREFIXES = ("text_encoder.", "lora_te_", "lora_te1_", "lora_te.")
_DEEP_ATTENTION = re.compile(
    r"((input_blocks|output_blocks|middle_block)[._]\d*[._]?\d*[._]?\d*[._]?|(down_blocks|up_blocks)[._]\d[._]attentions[._]\d[._])"
    r"transformer_blocks[._][1-9]"
)


@dataclass(frozen=True, slots=True)
class Guess:
    """A family guess and why (``family`` is ``None`` when nothing decides)."""

    family: Family | None
    evidence: str

    @property
    def name(self) -> str | None:
        return None if self.family is None else self.family.name


def _tag_matches(value: str, tags: Iterable[str]) -> bool:
    return any(value.startswith(t[:-1]) if t.endswith("*") else value == t for t in tags)


def from_header(metadata: Mapping[str, Any] | None) -> Guess:
    """The family named by SAI modelspec / kohya header fields (``Guess(None, ...)`` when none does)."""
    md = metadata or {}
    arch = str(md.get("modelspec.architecture", "") or "").lower()
    base = str(md.get("ss_base_model_version", "") or "").lower()
    module = str(md.get("ss_network_module", "") or "").lower()
    if arch:
        for fam in FAMILIES.values():
            if any(a in arch for a in fam.evidence.architectures):
                return Guess(fam, f"modelspec.architecture = {md['modelspec.architecture']}")
    if base:
        for fam in FAMILIES.values():
            if _tag_matches(base, fam.evidence.base_model_tags):
                return Guess(fam, f"ss_base_model_version = {md['ss_base_model_version']}")
    if module:
        for fam in FAMILIES.values():
            if any(m in module for m in fam.evidence.network_modules):
                return Guess(fam, f"ss_network_module = {md['ss_network_module']}")
    if str(md.get("ss_v2", "")).lower() == "true":
        return Guess(FAMILIES["sd2"], "ss_v2 = True")
    return Guess(None, "no family in the header")


def _hinted(flat: str) -> list[Family]:
    """The families whose key hints occur in ``flat``; those with a hint no other family lists come first (SD3 and
    Flux share diffusers' MMDiT names such as ``add_q_proj``; ``double_blocks`` is Flux's alone)."""
    found = [f for f in FAMILIES.values() if any(h in flat for h in f.evidence.key_hints)]
    if len(found) < 2:
        return found

    def exclusive(fam: Family) -> bool:
        others = {h for f in FAMILIES.values() if f is not fam for h in f.evidence.key_hints}
        return any(h in flat and h not in others for h in fam.evidence.key_hints)

    return sorted(found, key=lambda f: not exclusive(f))


def candidates(names: Iterable[str], scopes: Iterable[str | None] = ()) -> list[Family]:
    """Families that could hold modules of these names in these components, best first (the caller scores them by
    shape fit against their reference models)."""
    names = list(names)
    flat = " ".join(n.replace(".", "_") for n in names)
    named = {s for s in scopes if s not in (None, "denoiser")}
    possible = [f for f in FAMILIES.values() if named <= {*f.components, *f.scope_aliases}]
    hinted = [f for f in _hinted(flat) if f in possible] or _hinted(flat)
    if hinted:
        return hinted
    if "unet" in named or any(w in flat for w in _UNET_WORDS):
        return [f for f in possible if f.denoiser == "unet"]
    if "transformer" in named:
        return [f for f in possible if f.denoiser == "transformer"]
    return possible


def of_components(components: Mapping[str, nn.Module]) -> Family | None:
    """The family of real component models, from the denoiser's class and config."""
    den = next((m for c, m in components.items() if c in ("unet", "transformer")), None)
    if den is None:
        return None
    fams = [f for cls in type(den).__mro__ for f in of_denoiser(cls.__name__)]
    fams = [f for f in fams if set(components) <= set(f.components)] or fams
    if len(fams) <= 1:
        return fams[0] if fams else None
    cfg: Any = getattr(den, "config", None)
    get = (lambda k: cfg.get(k) if isinstance(cfg, dict) else getattr(cfg, k, None)) if cfg is not None else None
    # SDXL's UNet has the text-time embedding and a second encoder; SD1 / SD2 have neither
    two = "text_encoder_2" in components or (get is not None and get("addition_embed_type") == "text_time")
    fams = [f for f in fams if ("text_encoder_2" in f.components) == two] or fams
    if len(fams) > 1 and get is not None:
        width = get("cross_attention_dim")
        exact = [f for f in fams if f.evidence.cross_attention_width == width]
        # SD1 and SD2 share every key convention: anything that is not SD2's width is SD1-like
        fams = exact or [f for f in fams if f.evidence.cross_attention_width != 1024] or fams
    return fams[0]


def from_keys(shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, Any] | None = None) -> Guess:
    """The family of a file from its header, else its key names, else its shapes (``inspect``'s view)."""
    head = from_header(metadata)
    if head.family is not None:
        return head
    keys = list(shapes)
    low = [k.lower() for k in keys]
    flat = " ".join(low)
    hinted = [f for f in _hinted(flat) if f.denoiser == "transformer"]
    if hinted:
        fam = hinted[0]
        found = next(h for h in fam.evidence.key_hints if h in flat)
        return Guess(fam, f"{fam.display} module names ({found})")
    widths = Counter(
        shapes[k][1] for k, lk in zip(keys, low) if _CROSS_KV.search(lk) and _DOWN.search(k) and len(shapes[k]) >= 2
    )
    for width, _ in widths.most_common():
        for fam in FAMILIES.values():
            if fam.evidence.cross_attention_width == width:
                return Guess(fam, f"cross-attention width {width} (attn2.to_k/to_v)")
    sdxl = FAMILIES["sdxl"]
    if any(k.startswith(("text_encoder_2.", "lora_te2_")) for k in keys):
        return Guess(sdxl, "second CLIP text encoder (text_encoder_2 / lora_te2_)")
    if any(h in flat for h in sdxl.evidence.key_hints):
        return Guess(sdxl, "text-time embedding (add_embedding / label_emb)")
    if any(_DEEP_ATTENTION.search(k) for k in low):
        return Guess(sdxl, "several transformer blocks per attention (transformer_layers_per_block > 1)")
    te_widths = Counter(
        shapes[k][1]
        for k, lk in zip(keys, low)
        if lk.startswith(_TE_PREFIXES) and _TE_Q.search(lk) and _DOWN.search(k) and len(shapes[k]) >= 2
    )
    for width, _ in te_widths.most_common():
        for fam in FAMILIES.values():
            if fam.evidence.text_encoder_width == width and "text_encoder_2" not in fam.components:
                return Guess(fam, f"text encoder width {width} (no second encoder)")
    if any(re.search(r"attentions[._]\d+[._]proj_in", lk) and _DOWN.search(k) and len(shapes[k]) == 4 for k, lk in zip(keys, low)):
        return Guess(FAMILIES["sd1"], "convolutional proj_in (use_linear_projection=False)")
    return Guess(None, "no metadata and no decisive key names or shapes")
