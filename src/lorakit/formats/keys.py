"""Splitting checkpoint keys into (module name, tensor role) and (scope prefix, name).

A key is ``<prefix><module name><suffix>``. The suffix names the tensor's role inside an adapter (``down``, ``up``,
``alpha``, ``hada_w1_a``, ...) and its *style* (PEFT ``lora_A``, intermediate ``.lora.down``, attention-processor
``_lora.down``, kohya/LyCORIS ``lora_down``/``hada_*``; ``alpha`` is style-neutral). The prefix names the component
scope and the naming scheme. Conventions (``registry``) are combinations of prefixes and styles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: style names
PEFT, INTERMEDIATE, ATTNPROC, KOHYA, NEUTRAL = "peft", "intermediate", "attnproc", "kohya", "neutral"

_SEG = r"(?:\.[A-Za-z0-9_\-]+)?"  # an optional adapter-name segment (PEFT "default")

#: (regex on the key end, role, style, the key's possible last dotted segments or None for any); the role "<group>"
#: takes its value from the regex group 1
_SUFFIXES: list[tuple[re.Pattern[str], str, str, frozenset[str] | None]] = [
    (re.compile(rf"\.lora_A{_SEG}\.weight$"), "down", PEFT, frozenset({"weight"})),
    (re.compile(rf"\.lora_B{_SEG}\.weight$"), "up", PEFT, frozenset({"weight"})),
    (re.compile(rf"\.lora_B{_SEG}\.bias$"), "bias", PEFT, frozenset({"bias"})),
    (re.compile(r"\.lora_A$"), "down", PEFT, frozenset({"lora_A"})),
    (re.compile(r"\.lora_B$"), "up", PEFT, frozenset({"lora_B"})),
    (re.compile(rf"\.lora_magnitude_vector{_SEG}(?:\.weight)?$"), "magnitude", PEFT, None),
    (re.compile(r"\.lora(?:_linear_layer)?\.(down|up)\.weight$"), "<group>", INTERMEDIATE, frozenset({"weight"})),
    (re.compile(r"_lora\.(down|up)\.weight$"), "<group>", ATTNPROC, frozenset({"weight"})),
    (re.compile(r"\.lora_(down|up|mid)\.weight$"), "<group>", KOHYA, frozenset({"weight"})),
    (re.compile(r"\.lora_up\.bias$"), "bias", KOHYA, frozenset({"bias"})),
    (re.compile(r"\.(alpha)$"), "<group>", NEUTRAL, frozenset({"alpha"})),
    (re.compile(r"\.(dora_scale|scale)$"), "<group>", KOHYA, frozenset({"dora_scale", "scale"})),
    (re.compile(r"\.(hada_w[12]_[ab]|hada_t[12])$"), "<group>", KOHYA,
     frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"})),
    (re.compile(r"\.(lokr_w[12](?:_[ab])?|lokr_t[12])$"), "<group>", KOHYA,
     frozenset({"lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t1", "lokr_t2"})),
    (re.compile(r"\.(diff|diff_b|w_norm|b_norm)$"), "<group>", KOHYA, frozenset({"diff", "diff_b", "w_norm", "b_norm"})),
    (re.compile(r"\.(oft_blocks|oft_diag|oft_R|rescale|on_input|boft_\w+)$"), "<group>", KOHYA, None),
    (re.compile(r"\.(a1|a2|b1|b2)\.weight$"), "glora_<group>", KOHYA, frozenset({"weight"})),
    (re.compile(r"\.(weight|bias)$"), "plain_<group>", KOHYA, frozenset({"weight", "bias"})),
]

_Suffix = tuple[re.Pattern[str], str, str]
#: the suffixes that can match a key ending in ``.<last>`` (in order), so a key is tried against a few regexes only
_ANY_LAST: list[_Suffix] = [(rx, role, style) for rx, role, style, last in _SUFFIXES if last is None]
_BY_LAST: dict[str, list[_Suffix]] = {
    seg: [(rx, role, style) for rx, role, style, last in _SUFFIXES if last is None or seg in last]
    for _, _, _, ends in _SUFFIXES
    for seg in ends or ()
}

#: roles of algorithms lorakit cannot apply, with the algorithm's name
UNSUPPORTED_ROLES: dict[str, str] = {
    "oft_blocks": "OFT/BOFT",
    "oft_diag": "OFT",
    "oft_R": "OFT",
    "rescale": "OFT/BOFT",
    "on_input": "(IA)^3",
    "glora_a1": "GLoRA",
    "glora_a2": "GLoRA",
    "glora_b1": "GLoRA",
    "glora_b2": "GLoRA",
}

_DOWN_NAMES = (re.compile(rf"\.lora_A{_SEG}\.weight$"), re.compile(r"\.lora(?:_linear_layer)?\.down\.weight$"),
               re.compile(r"\.lora_down\.weight$"))
_ATTNPROC_DOWN = re.compile(r"_lora\.down\.weight$")


def split_suffix(key: str) -> tuple[str, str, str, bool] | None:
    """``(module name incl. prefix, role, style, attnproc)`` or ``None`` when no suffix is known."""
    last = key.rpartition(".")[2]
    if last.endswith("\n"):  # "$" also matches before a final newline
        last = last[:-1]
    for rx, role, style in _BY_LAST.get(last, _ANY_LAST):
        m = rx.search(key)
        if m is None or m.start() == 0:
            continue
        if "<group>" in role:
            role = role.replace("<group>", m.group(1))
        name = key[: m.start()]
        attnproc = style == ATTNPROC
        if style == NEUTRAL:
            # diffusers network_alphas spell alphas after the weight key: "<name>.lora.down.weight.alpha"
            for drx in _DOWN_NAMES:
                dm = drx.search(name)
                if dm is not None and dm.start() > 0:
                    name = name[: dm.start()]
                    break
            else:
                am = _ATTNPROC_DOWN.search(name)
                if am is not None and am.start() > 0:
                    name, attnproc = name[: am.start()], True
        return name, role, style, attnproc
    return None


@dataclass(frozen=True, slots=True)
class Prefix:
    """A key prefix: the component scope it names and the naming scheme of what follows."""

    text: str
    #: "denoiser" (unet or transformer, whichever the model has), a component name, or None (try every component)
    scope: str | None
    #: "dotted" or "underscored"
    naming: str
    #: prefix family, used by conventions to claim keys
    family: str


PREFIXES: list[Prefix] = [
    Prefix("base_model.model.", None, "dotted", "peft"),
    Prefix("lora_unet_", "denoiser", "underscored", "kohya"),
    Prefix("lora_te1_", "text_encoder", "underscored", "kohya"),
    Prefix("lora_te2_", "text_encoder_2", "underscored", "kohya"),
    Prefix("lora_te3_", "text_encoder_3", "underscored", "kohya"),
    Prefix("lora_te_", "text_encoder", "underscored", "kohya"),
    Prefix("lora_transformer_", "transformer", "underscored", "onetrainer"),
    Prefix("lycoris_", "denoiser", "underscored", "lycoris"),
    Prefix("oft_unet_", "denoiser", "underscored", "oft"),
    Prefix("bundle_emb.", None, "dotted", "embedding"),
    Prefix("text_encoders.clip_l.transformer.", "text_encoder", "dotted", "comfy"),
    Prefix("text_encoders.clip_g.transformer.", "text_encoder_2", "dotted", "comfy"),
    Prefix("text_encoders.t5xxl.transformer.", "text_encoder_3", "dotted", "comfy"),
    Prefix("text_encoders.clip_l.", "text_encoder", "dotted", "comfy"),
    Prefix("text_encoders.clip_g.", "text_encoder_2", "dotted", "comfy"),
    Prefix("text_encoders.t5xxl.", "text_encoder_3", "dotted", "comfy"),
    Prefix("diffusion_model.", "denoiser", "dotted", "comfy"),
    Prefix("unet.", "unet", "dotted", "component"),
    Prefix("transformer.", "transformer", "dotted", "component"),
    Prefix("text_encoder.", "text_encoder", "dotted", "component"),
    Prefix("text_encoder_2.", "text_encoder_2", "dotted", "component"),
    Prefix("text_encoder_3.", "text_encoder_3", "dotted", "component"),
    Prefix("clip_l.", "text_encoder", "dotted", "omi"),
    Prefix("clip_g.", "text_encoder_2", "dotted", "omi"),
    Prefix("t5.", "text_encoder_3", "dotted", "omi"),
    Prefix("", None, "dotted", "none"),
]


def split_prefix(name: str) -> tuple[Prefix, str]:
    """The first matching prefix of a module name and the rest."""
    for p in PREFIXES:
        if name.startswith(p.text) and len(name) > len(p.text):
            return p, name[len(p.text) :]
    return PREFIXES[-1], name


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """One recognised key."""

    key: str
    convention: str
    prefix: Prefix
    #: the module name after the prefix (dotted or underscored)
    name: str
    role: str
    style: str
    attnproc: bool = False
