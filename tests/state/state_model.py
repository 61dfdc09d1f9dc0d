"""Model-based (state-machine) testing of lorakit's pipeline LoRA API (issue 11 C, design principle 12).

Seeded random sequences of pipeline calls run on ``lorakit.attach(tiny_pipeline(family))`` (SD1, SDXL, SD3) while
an independent reference model tracks what the state must be. After every step each LoRA-loadable component's
output on fixed inputs is compared with a never-attached copy of the base component whose weights are set to the
formula, and the parameters are checked bit for bit.

The reference never calls lorakit code. Adapter "files" are state dicts this module writes with a seeded
generator, and every ΔW is computed here in fp64 from those tensors:

* diffusers PEFT-style ``<component>.<path>.lora_A/lora_B.weight`` (alpha = rank): ``ΔW = up @ down``;
* kohya ``lora_unet_`` / ``lora_te_`` (SD1) / ``lora_te1_`` / ``lora_te2_`` (SDXL, SD3) / ``lora_transformer_`` (SD3,
  OneTrainer legacy) / ``lora_te3_`` (T5) + the underscored module path (transformers-4 ``text_model_...`` path for
  CLIP) with ``.lora_down/.lora_up/.alpha``, a per-module alpha that is not the rank: ``ΔW = (alpha/r)·up @ down``;
* conv LoRA on UNet resnet / sampler 3×3 convs and 1×1 convs (kohya and PEFT-style): down ``(r, in, k, k)``, up
  ``(out, r, 1, 1)``, ``ΔW = (alpha/r)·(up.flatten(1) @ down.flatten(1)).reshape(W.shape)``;
* LyCORIS LoHa (``hada_w1_a``... + ``.alpha``) under the kohya prefix: ``ΔW = (alpha/r)·(w1a@w1b)⊙(w2a@w2b)``.

Each file comes in variants (same kind, rank, targets and shapes; other tensors and alphas) for hotswap. ΔW is
normalised to 0.3× the base weight's std, so every adapter visibly moves the outputs.

Semantics the reference encodes (the intended ones of issue 11; some differ from lorakit at the time of writing):

* ``load_lora_weights(F, adapter_name=n)``: in every component F has keys for, ``n`` becomes the ONLY active
  adapter, weight 1.0 (diffusers 0.42.1); other components keep their active set. Loading while disabled keeps
  the pipeline disabled. (``LORAKIT_STATE_LOAD=additive`` switches to "n is added to the active set", lorakit's
  behaviour before issue 11 B.1, to look for other bugs on that code.)
* ``set_adapters(names, weights)``: per component exactly the listed names loaded there are active; weights
  ``None`` → 1.0 each, a number → that for all, a list → one entry per name, each a number or a per-component dict
  (unlisted components 1.0) whose denoiser value may be a block dict. An adapter that is not listed keeps the
  weight it was last given (1.0 at load); that is the weight ``fuse_lora(adapter_names=[...])`` uses for it.
* Block dicts (UNet, the rule of ``lorakit/blocks.py``'s docstring, as diffusers): layer ``j`` of
  ``down_blocks.i`` / ``up_blocks.i`` is ``resnets.j`` + ``attentions.j``; samplers take layer 0's weight; a list
  of length 1 is broadcast; ``mid`` covers all of ``mid_block``; unlisted blocks and modules outside the blocks
  (``conv_in``, ``time_embedding``...) get 1.0. SD3: ``{"block_i": w}`` or a list over ``transformer_blocks``.
* ``fuse_lora(components, lora_scale=s, adapter_names)``: in the chosen components (empty = all) the named adapters
  (default: the active ones) are fused at (their current weight × s); fusing a fused adapter again replaces its
  fused weight (recomputed from the original, never doubled). Fused adapters no longer contribute unfused.
* ``unfuse_lora(components)``: the fused set of those components is cleared; the weights are the base bit for bit.
* ``disable_lora()`` (pipeline level): outputs equal the current base whatever happens while disabled (fuse, load,
  delete, hotswap, set_adapters); ASSUMPTION (``BITS_WHILE_DISABLED``): the parameters are then also the base bit
  for bit (lorakit parks fused tensors). ``enable_lora()`` shows exactly the current fused + active state.
* ``delete_adapters(names)``: gone everywhere, fused set included (weights = base + the remaining fused); the
  other adapters' activity is unchanged, except that deleting a component's only active adapter makes the first
  remaining one (load order) active, as PEFT does and diffusers users see (``LORAKIT_STATE_DELETE=keep``: none
  stays active).
* ``load_lora_weights(F_v, adapter_name=n, hotswap=True)`` for a loaded ``n`` of the same structure: tensors
  replaced; activity, weights and fused status stay (fused weights then use the new tensors).
* ``unload_lora_weights()``: every adapter removed; what the model computes stays, minus the unfused adapters:
  fused adapters stay baked into the weights while enabled (as diffusers; the new base = base + Σ fused), a
  disabled pipeline keeps its base (``LORAKIT_STATE_UNLOAD_DISABLED=bake``: baked even then); enabled afterwards.
  The bit-exact base of a baked module is then the tensor lorakit left (after checking it ≈ the formula).
* a call with a call-time scale ``s`` (denoiser ``cross_attention_kwargs`` / ``joint_attention_kwargs``
  ``{"scale": s}``; text encoders through ``pipe.encode_prompt(..., lora_scale=s)``): unfused active
  contributions × s; fused ones unaffected.

Checks after every step: every component's output within ``TOL`` (relative to max(1, max|ref|)); wherever nothing
is fused in a component (or the pipeline is disabled) the weights and biases of every module any file targets are
bit-identical to the base; where something is fused those weights are ≈ base + fused deltas. After an unload and
at the end of each sequence every parameter and buffer of each component is checked the same way.

Driver: seeded random sequences (8-25 steps) rather than hypothesis, so that the count is an exact setting, a
failure names a seed that replays it, and the failing sequence prints as plain calls. Rule choice is weighted toward
the rare transitions (fuse, disable, delete, hotswap, enable; unload now and then), and only calls valid in the
reference state are generated (loaded names, free names, same-structure hotswaps). On a failure the sequence is
shrunk (steps removed while a failure of the same step kind, check and component remains) and printed as code.

Run many sequences / list distinct failures: ``python tests/state/state_model.py --family sd1 -n 5000 --all``;
re-run one reported sequence: ``... --family sd1 --sequence-seed N``. A file ``F3_v1`` of a report is
``Harness("sd1").file("F3", 1).state_dict``.
Exploration knobs (environment): ``LORAKIT_STATE_LOAD=additive`` (above), ``LORAKIT_STATE_SKIP=disable,unload``
(operations never generated, to look past a known bug; ``fuse@disabled``: not while disabled),
``LORAKIT_STATE_TOL`` (default 1e-5).
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import re
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

FAMILIES = ("sd1", "sdxl", "sd3")
DENOISER = {"sd1": "unet", "sdxl": "unet", "sd3": "transformer"}
SCALE_KWARG = {"unet": "cross_attention_kwargs", "transformer": "joint_attention_kwargs"}
#: lorakit's LoRA-loadable components of each tiny pipeline (SD3: T5 too, which diffusers does not load into)
COMPONENTS = {
    "sd1": ("unet", "text_encoder"),
    "sdxl": ("unet", "text_encoder", "text_encoder_2"),
    "sd3": ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"),
}
KOHYA_PREFIX = {
    ("sd1", "unet"): "lora_unet",
    ("sd1", "text_encoder"): "lora_te",
    ("sdxl", "unet"): "lora_unet",
    ("sdxl", "text_encoder"): "lora_te1",
    ("sdxl", "text_encoder_2"): "lora_te2",
    ("sd3", "transformer"): "lora_transformer",
    ("sd3", "text_encoder"): "lora_te1",
    ("sd3", "text_encoder_2"): "lora_te2",
    ("sd3", "text_encoder_3"): "lora_te3",
}
NAMES = ("a", "b", "c", "d", "e")
MAX_LOADED = 4
TOL = float(os.environ.get("LORAKIT_STATE_TOL", "1e-5"))
#: see the module docstring: while disabled, parameters must be the base bit for bit
BITS_WHILE_DISABLED = True
LOAD_SEMANTICS = os.environ.get("LORAKIT_STATE_LOAD", "diffusers")  # or "additive"
#: the lead's call: unload while disabled leaves the base ("base", default) or bakes the fused adapters ("bake")
UNLOAD_DISABLED = os.environ.get("LORAKIT_STATE_UNLOAD_DISABLED", "base")
#: the lead's call: deleting a component's last active adapter activates the first remaining one in load order ("reactivate",
#: default), at its last weight, as PEFT does; or leaves none active ("keep")
DELETE_SEMANTICS = os.environ.get("LORAKIT_STATE_DELETE", "reactivate")
#: exploration knob: operations never generated (comma-separated op names, e.g. "disable,hotswap"; "fuse@disabled":
#: not while the pipeline is disabled)
SKIP_OPS = frozenset(o for o in os.environ.get("LORAKIT_STATE_SKIP", "").split(",") if o)
WEIGHT_VALUES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, -0.5)
LORA_SCALES = (1.0, 1.0, 0.5, 0.75, 1.5, -1.0, 0.0)
CALL_SCALES = (0.0, 0.5, 1.5, -1.0)
DELTA_REL_STD = 0.3


# ------------------------------------------------------------------------------------------------ adapter files
@dataclass(frozen=True)
class FileSpec:
    """One generated adapter file: format, rank and targets (component, regex searched in module paths)."""

    key: str
    kind: str  # "peft" | "kohya" | "loha"
    rank: int
    targets: tuple[tuple[str, str], ...]
    te_text_model: bool = True  # PEFT text-encoder keys with the transformers-4 "text_model." path

    def components(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for c, _ in self.targets))


_Q_V = r"self_attn\.[qv]_proj$"
CATALOG: dict[str, tuple[FileSpec, ...]] = {
    "sd1": (
        FileSpec("F0", "peft", 4, (("unet", r"attn1\.to_[qk]$"), ("text_encoder", _Q_V))),
        FileSpec("F1", "peft", 2, (("unet", r"attn1\.to_q$|attn2\.to_k$|ff\.net\.2$"),)),
        FileSpec(
            "F2", "kohya", 8, (("unet", r"attn1\.to_k$|attn1\.to_out\.0$|proj_in$"), ("text_encoder", r"out_proj$|fc1$"))
        ),
        FileSpec("F3", "peft", 1, (("text_encoder", r"self_attn\.q_proj$|mlp\.fc2$"),), te_text_model=False),
        FileSpec(
            "F4",
            "kohya",
            3,
            (
                (
                    "unet",
                    r"^down_blocks\.0\.resnets\.0\.conv1$|^down_blocks\.1\.resnets\.1\.conv1$|^mid_block\.resnets\.0\.conv1$"
                    r"|^up_blocks\.0\.resnets\.2\.conv1$|^up_blocks\.1\.resnets\.1\.conv2$|samplers\.0\.conv$",
                ),
            ),
        ),
        FileSpec("F5", "loha", 2, (("unet", r"attn2\.to_v$|attn1\.to_q$|ff\.net\.0\.proj$"), ("text_encoder", r"k_proj$"))),
        FileSpec("F6", "kohya", 5, (("text_encoder", r"self_attn\.[qv]_proj$|mlp\.fc1$"),)),
        FileSpec("F7", "peft", 6, (("unet", r"proj_out$|attn2\.to_out\.0$|^time_embedding\.linear_1$"),)),
        FileSpec(
            "F8",
            "peft",
            7,
            (("unet", r"^down_blocks\.0\.resnets\.1\.conv2$|^up_blocks\.1\.resnets\.0\.conv1$|^mid_block\.resnets\.1\.conv2$|^conv_in$"),),
        ),
    ),
    "sdxl": (
        FileSpec("F0", "peft", 4, (("unet", r"attn1\.to_[qk]$"), ("text_encoder", _Q_V), ("text_encoder_2", _Q_V))),
        FileSpec("F1", "peft", 2, (("unet", r"attn1\.to_q$|attn2\.to_k$|ff\.net\.2$"),)),
        FileSpec(
            "F2",
            "kohya",
            8,
            (("unet", r"attn1\.to_k$|attn1\.to_out\.0$|proj_in$"), ("text_encoder", r"out_proj$"), ("text_encoder_2", r"fc1$")),
        ),
        FileSpec("F3", "peft", 1, (("text_encoder_2", r"self_attn\.q_proj$|mlp\.fc2$"),), te_text_model=False),
        FileSpec(
            "F4",
            "kohya",
            3,
            (("unet", r"^down_blocks\.0\.resnets\.0\.conv1$|^mid_block\.resnets\.0\.conv1$|^up_blocks\.0\.resnets\.2\.conv1$|samplers\.0\.conv$"),),
        ),
        FileSpec("F5", "loha", 2, (("unet", r"attn2\.to_v$|ff\.net\.0\.proj$"), ("text_encoder_2", r"k_proj$"))),
        FileSpec("F6", "kohya", 5, (("text_encoder", r"self_attn\.[qv]_proj$|mlp\.fc1$"),)),
        FileSpec("F7", "peft", 6, (("unet", r"proj_out$|attn2\.to_out\.0$|^add_embedding\.linear_1$"),)),
    ),
    "sd3": (
        FileSpec("F0", "peft", 4, (("transformer", r"attn\.to_[qk]$"), ("text_encoder", _Q_V))),
        FileSpec("F1", "peft", 2, (("transformer", r"attn\.add_v_proj$|\.ff\.net\.0\.proj$|attn\.to_q$"),)),
        FileSpec(
            "F2",
            "kohya",
            8,
            (
                ("transformer", r"attn\.to_out\.0$|norm1\.linear$|ff_context\.net\.2$"),
                ("text_encoder", r"out_proj$"),
                ("text_encoder_2", r"fc1$"),
            ),
        ),
        FileSpec(
            "F3",
            "peft",
            1,
            (("text_encoder_2", r"self_attn\.q_proj$"), ("text_encoder_3", r"SelfAttention\.q$|DenseReluDense\.wo$")),
            te_text_model=False,
        ),
        FileSpec("F4", "loha", 3, (("transformer", r"attn\.to_v$|attn\.add_q_proj$"), ("text_encoder", r"k_proj$"))),
        FileSpec("F5", "peft", 5, (("transformer", r"^context_embedder$|^proj_out$|attn\.to_k$"),)),
        FileSpec("F6", "kohya", 6, (("text_encoder", r"mlp\.fc1$|self_attn\.q_proj$"), ("text_encoder_3", r"SelfAttention\.v$"))),
        FileSpec("F7", "peft", 7, (("transformer", r"^pos_embed\.proj$|transformer_blocks\.1\.attn\.to_q$"),)),
    ),
}


@dataclass
class AdapterFile:
    """A generated file: its state dict and, per component and module path, ΔW in fp64 (at weight 1)."""

    spec: FileSpec
    variant: int
    state_dict: dict[str, Tensor]
    deltas: dict[str, dict[str, Tensor]]

    @property
    def label(self) -> str:
        return self.spec.key if self.variant == 0 else f"{self.spec.key}_v{self.variant}"


def _is_clip(model: nn.Module) -> bool:
    return type(model).__name__.startswith("CLIP")


def _peft_path(model: nn.Module, path: str, text_model: bool) -> str:
    if not _is_clip(model):
        return path
    bare = path[len("text_model.") :] if path.startswith("text_model.") else path
    return f"text_model.{bare}" if text_model else bare


def _kohya_path(model: nn.Module, path: str) -> str:
    if _is_clip(model) and not path.startswith("text_model."):
        path = f"text_model.{path}"  # kohya names use the transformers-4 CLIP paths
    return path.replace(".", "_")


def target_modules(pipe: Any, spec: FileSpec) -> dict[str, dict[str, nn.Module]]:
    out: dict[str, dict[str, nn.Module]] = {}
    for comp, pattern in spec.targets:
        rx = re.compile(pattern)
        model = getattr(pipe, comp)
        found = {
            p: m for p, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and rx.search(p)
        }
        if spec.kind == "loha":
            found = {p: m for p, m in found.items() if isinstance(m, nn.Linear)}
        assert found, f"{spec.key}: no {comp} module matches {pattern!r}"
        out.setdefault(comp, {}).update(found)
    return out


def lora_delta(alpha: float, up: Tensor, down: Tensor) -> Tensor:
    """LoRA / conv LoRA ΔW in fp64: ``(alpha/r)·up @ down``, reshaped to the weight (down ``(r, in, *k)``)."""
    r = down.shape[0]
    shape = (up.shape[0], *down.shape[1:])
    return ((alpha / r) * (up.double().flatten(1) @ down.double().flatten(1))).reshape(shape)


def loha_delta(alpha: float, w1a: Tensor, w1b: Tensor, w2a: Tensor, w2b: Tensor) -> Tensor:
    """LoHa ΔW in fp64: ``(alpha/r)·(w1a@w1b)⊙(w2a@w2b)``."""
    r = w1b.shape[0]
    return (alpha / r) * (w1a.double() @ w1b.double()) * (w2a.double() @ w2b.double())


def build_file(family: str, pipe: Any, spec: FileSpec, variant: int) -> AdapterFile:
    """Generate file ``spec`` (variant ``variant``) for ``pipe``'s modules, with its fp64 reference deltas."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{family}/{spec.key}/{variant}".encode()))
    r = spec.rank
    sd: dict[str, Tensor] = {}
    deltas: dict[str, dict[str, Tensor]] = {}
    for comp, modules in target_modules(pipe, spec).items():
        model = getattr(pipe, comp)
        for path, mod in sorted(modules.items()):
            w = mod.weight.detach()
            out_f, in_f = w.shape[0], w.shape[1]
            ksz = tuple(w.shape[2:])
            if spec.kind == "peft":
                alpha = float(r)
            else:
                alpha = r * [0.25, 0.5, 0.75, 1.5, 2.0][int(torch.randint(0, 5, (1,), generator=g))]
            if spec.kind == "loha":
                w1a, w1b = torch.randn(out_f, r, generator=g), torch.randn(r, in_f, generator=g)
                w2a, w2b = torch.randn(out_f, r, generator=g), torch.randn(r, in_f, generator=g)
                c = DELTA_REL_STD * float(w.double().std()) / float(loha_delta(alpha, w1a, w1b, w2a, w2b).std())
                w1a = (w1a * c).contiguous()
                delta = loha_delta(alpha, w1a, w1b, w2a, w2b)
                stem = f"{KOHYA_PREFIX[(family, comp)]}_{_kohya_path(model, path)}"
                sd.update(
                    {
                        f"{stem}.hada_w1_a": w1a,
                        f"{stem}.hada_w1_b": w1b,
                        f"{stem}.hada_w2_a": w2a,
                        f"{stem}.hada_w2_b": w2b,
                        f"{stem}.alpha": torch.tensor(alpha),
                    }
                )
            else:
                down = torch.randn(r, in_f, *ksz, generator=g)
                up = torch.randn(out_f, r, *([1] * len(ksz)), generator=g)
                c = DELTA_REL_STD * float(w.double().std()) / float(lora_delta(alpha, up, down).std())
                up = (up * c).contiguous()
                delta = lora_delta(alpha, up, down)
                if spec.kind == "peft":
                    stem = f"{comp}.{_peft_path(model, path, spec.te_text_model)}"
                    sd[f"{stem}.lora_A.weight"] = down
                    sd[f"{stem}.lora_B.weight"] = up
                else:
                    stem = f"{KOHYA_PREFIX[(family, comp)]}_{_kohya_path(model, path)}"
                    sd[f"{stem}.lora_down.weight"] = down
                    sd[f"{stem}.lora_up.weight"] = up
                    sd[f"{stem}.alpha"] = torch.tensor(alpha)
            deltas.setdefault(comp, {})[path] = delta
    return AdapterFile(spec, variant, sd, deltas)


# ------------------------------------------------------------------------------------------------ block weights
_UNET_LAYER = re.compile(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.")
_UNET_BLOCK = re.compile(r"^(down|up)_blocks\.(\d+)\.")
_SD3_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.")


def module_factor(family: str, spec: Any, path: str) -> float:
    """The weight a component-level spec (number, UNet block dict, SD3 block dict/list) gives module ``path``."""
    if isinstance(spec, (int, float)):
        return float(spec)
    if family == "sd3":
        m = _SD3_BLOCK.match(path)
        if m is None:
            return 1.0
        i = int(m.group(1))
        if isinstance(spec, list):
            return float(spec[i])
        return float(spec.get(f"block_{i}", 1.0))
    if path.startswith("mid_block."):
        return float(spec.get("mid", 1.0))
    b = _UNET_BLOCK.match(path)
    if b is None or b.group(1) not in spec:
        return 1.0
    layer = _UNET_LAYER.match(path)
    j = int(layer.group(4)) if layer is not None else 0  # samplers: layer 0
    value = spec[b.group(1)]
    if isinstance(value, dict):
        value = value.get(f"block_{b.group(2)}")
        if value is None:
            return 1.0
    if isinstance(value, list):
        return float(value[j] if len(value) > 1 else value[0])
    return float(value)


def freeze(x: Any) -> Any:
    """A hashable, order-insensitive form of a weight spec (for cache keys)."""
    if isinstance(x, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return tuple(freeze(v) for v in x)
    return float(x) if isinstance(x, (int, float)) else x


# ------------------------------------------------------------------------------------------------ reference state
#: one contribution to a component's weights: (file key, variant, weight spec, multiplier)
Contribution = tuple[str, int, Any, float]


@dataclass
class RefAdapter:
    file: str
    variant: int
    comps: tuple[str, ...]


@dataclass
class RefState:
    """What the pipeline's LoRA state must be, tracked without lorakit."""

    comps: tuple[str, ...]
    load_semantics: str = LOAD_SEMANTICS
    adapters: dict[str, RefAdapter] = field(default_factory=dict)
    active: dict[str, list[str]] = field(default_factory=dict)
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)
    fused: dict[str, dict[str, tuple[Any, float]]] = field(default_factory=dict)  # name -> (spec, lora_scale)
    enabled: bool = True
    baked: dict[str, list[Contribution]] = field(default_factory=dict)  # left in the weights by unload
    base_bits: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # exact base of baked modules

    def __post_init__(self) -> None:
        for c in self.comps:
            self.active.setdefault(c, [])
            self.weights.setdefault(c, {})
            self.fused.setdefault(c, {})
            self.baked.setdefault(c, [])
            self.base_bits.setdefault(c, {})

    def loaded_in(self, comp: str) -> list[str]:
        return [n for n, a in self.adapters.items() if comp in a.comps]

    def fused_contribs(self, comp: str) -> list[Contribution]:
        out = []
        for n, (spec, ls) in self.fused[comp].items():
            a = self.adapters[n]
            out.append((a.file, a.variant, spec, ls))
        return out

    def expected(self, comp: str, scale: float = 1.0) -> list[Contribution]:
        """Everything that must show in ``comp``'s output at call-time scale ``scale``."""
        out = list(self.baked[comp])
        if not self.enabled:
            return out
        out += self.fused_contribs(comp)
        for n in self.active[comp]:
            if n not in self.fused[comp]:
                a = self.adapters[n]
                out.append((a.file, a.variant, self.weights[comp][n], scale))
        return out

    def summary(self) -> str:
        parts = [f"enabled={self.enabled}", "loaded=" + ",".join(f"{n}:{a.file}v{a.variant}" for n, a in self.adapters.items())]
        for c in self.comps:
            w = {n: self.weights[c][n] for n in self.active[c]}
            f = {n: f"{s!r}x{ls}" for n, (s, ls) in self.fused[c].items()}
            if w or f or self.baked[c]:
                parts.append(f"{c}: active={w} fused={f}" + (f" baked={len(self.baked[c])}" if self.baked[c] else ""))
        return "; ".join(parts)


# ------------------------------------------------------------------------------------------------ steps
def _q(x: Any) -> str:
    return repr(x).replace("'", '"')


class Step:
    """One pipeline call: ``valid`` (preconditions on the reference), ``apply`` (lorakit), ``update`` (reference)."""

    op = ""

    def valid(self, h: Harness, s: RefState) -> bool:
        return True

    def apply(self, h: Harness, pipe: Any) -> None:
        raise NotImplementedError

    def update(self, h: Harness, s: RefState) -> None:
        pass

    def call_scale(self) -> float | None:
        return None


@dataclass(frozen=True)
class Load(Step):
    file: str
    variant: int
    name: str
    op = "load"

    def valid(self, h: Harness, s: RefState) -> bool:
        return self.name not in s.adapters

    def apply(self, h: Harness, pipe: Any) -> None:
        pipe.load_lora_weights(dict(h.file(self.file, self.variant).state_dict), adapter_name=self.name)

    def update(self, h: Harness, s: RefState) -> None:
        comps = h.spec(self.file).components()
        s.adapters[self.name] = RefAdapter(self.file, self.variant, comps)
        for c in comps:
            s.active[c] = [*s.active[c], self.name] if s.load_semantics == "additive" else [self.name]
            s.weights[c][self.name] = 1.0

    def __str__(self) -> str:
        return f'pipe.load_lora_weights({h_label(self.file, self.variant)}, adapter_name="{self.name}")'


@dataclass(frozen=True)
class Hotswap(Step):
    file: str
    variant: int
    name: str
    op = "hotswap"

    def valid(self, h: Harness, s: RefState) -> bool:
        a = s.adapters.get(self.name)
        return a is not None and a.file == self.file

    def apply(self, h: Harness, pipe: Any) -> None:
        pipe.load_lora_weights(dict(h.file(self.file, self.variant).state_dict), adapter_name=self.name, hotswap=True)

    def update(self, h: Harness, s: RefState) -> None:
        s.adapters[self.name].variant = self.variant

    def __str__(self) -> str:
        return f'pipe.load_lora_weights({h_label(self.file, self.variant)}, adapter_name="{self.name}", hotswap=True)'


@dataclass(frozen=True)
class SetAdapters(Step):
    names: tuple[str, ...]
    weights: Any  # None | float | list (frozen via tuple of reprs at construction time is not needed: never mutated)
    op = "set_adapters"

    def valid(self, h: Harness, s: RefState) -> bool:
        return all(n in s.adapters for n in self.names)

    def apply(self, h: Harness, pipe: Any) -> None:
        pipe.set_adapters(list(self.names), copy.deepcopy(self.weights))

    def update(self, h: Harness, s: RefState) -> None:
        if self.weights is None:
            per = [1.0] * len(self.names)
        elif isinstance(self.weights, list):
            per = list(self.weights)
        else:
            per = [self.weights] * len(self.names)
        for c in s.comps:
            here = s.loaded_in(c)
            s.active[c] = [n for n in self.names if n in here]
            for n, w in zip(self.names, per):
                if n in here:
                    spec = w.get(c) if isinstance(w, dict) else w
                    s.weights[c][n] = 1.0 if spec is None else copy.deepcopy(spec)

    def __str__(self) -> str:
        return f"pipe.set_adapters({_q(list(self.names))}, {_q(self.weights)})"


@dataclass(frozen=True)
class Fuse(Step):
    components: tuple[str, ...]
    lora_scale: float
    adapter_names: tuple[str, ...] | None
    #: lorakit's fuse_strategy ("inplace"; None: the default, copy): the same weights either way
    strategy: str | None = None
    op = "fuse"

    def valid(self, h: Harness, s: RefState) -> bool:
        return self.adapter_names is None or all(n in s.adapters for n in self.adapter_names)

    def apply(self, h: Harness, pipe: Any) -> None:
        names = None if self.adapter_names is None else list(self.adapter_names)
        extra = {} if self.strategy is None else {"fuse_strategy": self.strategy}
        pipe.fuse_lora(components=list(self.components), lora_scale=self.lora_scale, adapter_names=names, **extra)

    def update(self, h: Harness, s: RefState) -> None:
        for c in self.components or s.comps:
            here = s.loaded_in(c)
            pool = s.active[c] if self.adapter_names is None else [n for n in self.adapter_names if n in here]
            for n in pool:
                s.fused[c][n] = (copy.deepcopy(s.weights[c][n]), self.lora_scale)

    def __str__(self) -> str:
        args = [f"components={_q(list(self.components))}"]
        if self.lora_scale != 1.0:
            args.append(f"lora_scale={self.lora_scale}")
        if self.adapter_names is not None:
            args.append(f"adapter_names={_q(list(self.adapter_names))}")
        if self.strategy is not None:
            args.append(f"fuse_strategy={_q(self.strategy)}")
        return f"pipe.fuse_lora({', '.join(args)})"


@dataclass(frozen=True)
class Unfuse(Step):
    components: tuple[str, ...]
    op = "unfuse"

    def apply(self, h: Harness, pipe: Any) -> None:
        pipe.unfuse_lora(components=list(self.components))

    def update(self, h: Harness, s: RefState) -> None:
        for c in self.components or s.comps:
            s.fused[c].clear()

    def __str__(self) -> str:
        return f"pipe.unfuse_lora(components={_q(list(self.components))})"


@dataclass(frozen=True)
class Disable(Step):
    op = "disable"

    def apply(self, h: Harness, pipe: Any) -> None:
        pipe.disable_lora()

    def update(self, h: Harness, s: RefState) -> None:
        s.enabled = False

    def __str__(self) -> str:
        return "pipe.disable_lora()"


@dataclass(frozen=True)
class Enable(Step):
    op = "enable"

    def apply(self, h: Harness, pipe: Any) -> None:
        pipe.enable_lora()

    def update(self, h: Harness, s: RefState) -> None:
        s.enabled = True

    def __str__(self) -> str:
        return "pipe.enable_lora()"


@dataclass(frozen=True)
class Delete(Step):
    names: tuple[str, ...]
    as_str: bool = False
    op = "delete"

    def valid(self, h: Harness, s: RefState) -> bool:
        return all(n in s.adapters for n in self.names)

    def apply(self, h: Harness, pipe: Any) -> None:
        pipe.delete_adapters(self.names[0] if self.as_str else list(self.names))

    def update(self, h: Harness, s: RefState) -> None:
        for n in self.names:
            del s.adapters[n]
            for c in s.comps:
                was_active = n in s.active[c]
                if was_active:
                    s.active[c].remove(n)
                s.weights[c].pop(n, None)
                s.fused[c].pop(n, None)
                if DELETE_SEMANTICS == "reactivate" and was_active and not s.active[c] and s.loaded_in(c):
                    s.active[c] = [s.loaded_in(c)[0]]

    def __str__(self) -> str:
        return f"pipe.delete_adapters({_q(self.names[0]) if self.as_str else _q(list(self.names))})"


@dataclass(frozen=True)
class Unload(Step):
    op = "unload"

    def apply(self, h: Harness, pipe: Any) -> None:
        pipe.unload_lora_weights()

    def update(self, h: Harness, s: RefState) -> None:
        for c in s.comps:
            if s.enabled or UNLOAD_DISABLED == "bake":  # ASSUMPTION (module docstring)
                s.baked[c] += s.fused_contribs(c)
            s.fused[c].clear()
            s.active[c] = []
            s.weights[c].clear()
        s.adapters.clear()
        s.enabled = True

    def __str__(self) -> str:
        return "pipe.unload_lora_weights()"


@dataclass(frozen=True)
class Call(Step):
    scale: float
    op = "call"

    def apply(self, h: Harness, pipe: Any) -> None:
        pass  # the check after this step runs the components with the call-time scale

    def call_scale(self) -> float | None:
        return self.scale

    def __str__(self) -> str:
        return f"<call with scale {self.scale}: denoiser(..., {{'scale': {self.scale}}}), encode_prompt(..., lora_scale={self.scale})>"


def h_label(file: str, variant: int) -> str:
    return file if variant == 0 else f"{file}_v{variant}"


# ------------------------------------------------------------------------------------------------ generator
def _weight_value(rng: random.Random) -> float:
    return rng.choice(WEIGHT_VALUES)


def _block_spec(rng: random.Random, family: str) -> Any:
    if family == "sd3":
        if rng.random() < 0.4:
            return [_weight_value(rng) for _ in range(2)]
        return {f"block_{i}": _weight_value(rng) for i in rng.sample(range(2), rng.randint(1, 2))}
    spec: dict[str, Any] = {}
    layers = {"down": 2, "up": 3}
    for direction in rng.sample(["down", "mid", "up"], rng.randint(1, 3)):
        if direction == "mid":
            spec["mid"] = _weight_value(rng)
            continue
        roll = rng.random()
        if roll < 0.3:
            spec[direction] = _weight_value(rng)
        else:
            per: dict[str, Any] = {}
            for i in rng.sample(range(2), rng.randint(1, 2)):
                if rng.random() < 0.5:
                    per[f"block_{i}"] = [_weight_value(rng) for _ in range(layers[direction])]
                elif rng.random() < 0.3:
                    per[f"block_{i}"] = [_weight_value(rng)]
                else:
                    per[f"block_{i}"] = _weight_value(rng)
            spec[direction] = per
    return spec


class Generator:
    """Weighted random choice of the next step, from the reference state (only valid calls)."""

    def __init__(self, h: Harness, rng: random.Random) -> None:
        self.h, self.rng = h, rng

    def _subset(self, items: Sequence[str], empty_ok: bool = False) -> list[str]:
        k = self.rng.randint(0 if empty_ok else 1, len(items))
        return self.rng.sample(list(items), k)

    def next(self, s: RefState) -> Step:
        rng, h = self.rng, self.h
        loaded = list(s.adapters)
        free = [n for n in NAMES if n not in s.adapters]
        any_fused = any(s.fused[c] for c in s.comps)
        options: list[tuple[str, float]] = [
            ("unfuse", 2.0 if any_fused else 0.3),
            ("disable", 3.0 if s.enabled else 0.5),
            ("enable", 4.0 if not s.enabled else 0.5),
            ("unload", 0.6),
            ("call", 2.0),
        ]
        if free and len(loaded) < MAX_LOADED:
            options.append(("load", 6.0 if len(loaded) < 2 else 2.5))
        if loaded:
            options += [("set_adapters", 3.0), ("fuse", 5.0), ("delete", 2.5), ("hotswap", 3.0)]
        options = [(o, w) for o, w in options if o not in SKIP_OPS and (s.enabled or f"{o}@disabled" not in SKIP_OPS)]
        op = rng.choices([o for o, _ in options], weights=[w for _, w in options])[0]
        comps = list(s.comps)
        if op == "load":
            spec = rng.choice(h.catalog)
            return Load(spec.key, rng.choice([0, 0, 1]), rng.choice(free))
        if op == "hotswap":
            name = rng.choice(loaded)
            a = s.adapters[name]
            return Hotswap(a.file, rng.choice([v for v in range(3) if v != a.variant]), name)
        if op == "set_adapters":
            names = self._subset(loaded)
            roll = rng.random()
            if roll < 0.2:
                return SetAdapters(tuple(names), None)
            if roll < 0.35:
                return SetAdapters(tuple(names), _weight_value(rng))
            weights: list[Any] = []
            for n in names:
                if rng.random() < 0.5:
                    weights.append(_weight_value(rng))
                    continue
                entry: dict[str, Any] = {}
                for c in self._subset([c for c in comps if c in s.adapters[n].comps] or comps):
                    if c == DENOISER[h.family] and rng.random() < 0.6:
                        entry[c] = _block_spec(rng, h.family)
                    else:
                        entry[c] = _weight_value(rng)
                weights.append(entry)
            return SetAdapters(tuple(names), weights)
        if op == "fuse":
            fcomps = [] if rng.random() < 0.5 else self._subset(comps)
            names = None if rng.random() < 0.6 else tuple(self._subset(loaded))
            return Fuse(tuple(fcomps), rng.choice(LORA_SCALES), names, "inplace" if rng.random() < 0.35 else None)
        if op == "unfuse":
            return Unfuse(tuple([] if rng.random() < 0.6 else self._subset(comps)))
        if op == "delete":
            names = self._subset(loaded)
            return Delete(tuple(names), as_str=len(names) == 1 and rng.random() < 0.5)
        if op == "call":
            return Call(rng.choice(CALL_SCALES))
        return {"disable": Disable, "enable": Enable, "unload": Unload}[op]()


# ------------------------------------------------------------------------------------------------ harness
class StepFailure(Exception):
    def __init__(self, kind: str, comp: str, detail: str) -> None:
        super().__init__(f"{kind} [{comp}]: {detail}")
        self.kind, self.comp, self.detail = kind, comp, detail


@dataclass
class Failure:
    family: str
    steps: list[Step]  # the executed steps, the failing one last
    kind: str
    comp: str
    detail: str
    state: str
    seed: int | None = None

    @property
    def signature(self) -> tuple[str, str, str]:
        return (self.steps[-1].op, self.kind, self.comp)

    def render(self, h: Harness | None = None) -> str:
        files = sorted({(st.file, st.variant) for st in self.steps if isinstance(st, (Load, Hotswap))})
        lines = [f"family {self.family}" + (f", sequence seed {self.seed}" if self.seed is not None else "")]
        if h is not None:
            for f, v in files:
                lines.append(f"  {h_label(f, v)} = {h.describe(f)}")
        lines.append(f'pipe = lorakit.attach(tiny_pipeline("{self.family}"))')
        for i, st in enumerate(self.steps, 1):
            lines.append(f"{i:>3}. {st}")
        lines.append(f"  -> {self.kind} [{self.comp}]: {self.detail}")
        lines.append(f"  reference state: {self.state}")
        return "\n".join(lines)


def _bits_equal(a: Tensor, b: Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.float32:
        return torch.equal(a.reshape(-1).view(torch.int32), b.reshape(-1).view(torch.int32))
    return torch.equal(a, b)


class Harness:
    """Everything per family that sequences share: base pipeline, reference pipeline, files, inputs, caches."""

    def __init__(self, family: str) -> None:
        from lorakit.tiny import tiny_pipeline

        self.family = family
        self.denoiser = DENOISER[family]
        self.comps = COMPONENTS[family]
        self.base = tiny_pipeline(family)
        for c in self.comps:
            getattr(self.base, c).requires_grad_(False)
        self.ref = copy.deepcopy(self.base)  # never attached: the reference model
        self.catalog = CATALOG[family]
        self._specs = {s.key: s for s in self.catalog}
        self._files: dict[tuple[str, int], AdapterFile] = {}
        self.w0 = {c: {k: v.detach().clone() for k, v in getattr(self.base, c).state_dict().items()} for c in self.comps}
        self.touched: dict[str, dict[str, nn.Module]] = {c: {} for c in self.comps}
        for spec in self.catalog:
            for c, mods in target_modules(self.ref, spec).items():
                self.touched[c].update(mods)
        self._installed: dict[str, Any] = {}
        self._out_cache: dict[Any, Any] = {}
        self._w_cache: dict[Any, Tensor] = {}
        self._inputs = self._make_inputs()

    # ------------------------------------------------------------- files
    def spec(self, key: str) -> FileSpec:
        return self._specs[key]

    def file(self, key: str, variant: int) -> AdapterFile:
        f = self._files.get((key, variant))
        if f is None:
            f = self._files[(key, variant)] = build_file(self.family, self.base, self._specs[key], variant)
        return f

    def describe(self, key: str) -> str:
        spec = self._specs[key]
        f = self.file(key, 0)
        mods = ", ".join(f"{c} {len(d)} modules" for c, d in f.deltas.items())
        kind = {"peft": "diffusers PEFT lora_A/lora_B", "kohya": "kohya lora_down/lora_up/alpha", "loha": "LoHa (kohya prefix)"}
        conv = any(t.dim() == 4 for d in f.deltas.values() for t in d.values())
        return f"{kind[spec.kind]}{' (conv)' if conv else ''}, rank {spec.rank}: {mods}"

    # ------------------------------------------------------------- inputs and outputs
    def _make_inputs(self) -> dict[str, Any]:
        g = torch.Generator().manual_seed(123)
        if self.family == "sd1":
            den = dict(sample=torch.randn(1, 4, 8, 8, generator=g), timestep=10, encoder_hidden_states=torch.randn(1, 5, 32, generator=g))
        elif self.family == "sdxl":
            den = dict(
                sample=torch.randn(1, 4, 8, 8, generator=g),
                timestep=10,
                encoder_hidden_states=torch.randn(1, 5, 64, generator=g),
                added_cond_kwargs={"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.randn(1, 6, generator=g)},
            )
        else:
            den = dict(
                hidden_states=torch.randn(1, 16, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(1, 7, 64, generator=g),
                pooled_projections=torch.randn(1, 64, generator=g),
                timestep=torch.tensor([10.0]),
            )
        return {"denoiser": den, "clip_ids": torch.tensor([[517, 40, 41, 42, 43, 518]]), "t5_ids": torch.tensor([[40, 41, 42, 43, 1]])}

    @torch.no_grad()
    def component_output(self, pipe: Any, comp: str, scale: float | None = None) -> Tensor:
        model = getattr(pipe, comp)
        if comp == self.denoiser:
            extra = {} if scale is None else {SCALE_KWARG[comp]: {"scale": scale}}
            out = model(**self._inputs["denoiser"], **extra)
            return out[0] if isinstance(out, tuple) else out.sample
        ids = self._inputs["t5_ids" if comp == "text_encoder_3" else "clip_ids"]
        return model(ids).last_hidden_state

    @torch.no_grad()
    def prompt_embeds(self, pipe: Any, lora_scale: float | None) -> list[Tensor]:
        kw: dict[str, Any] = dict(device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
        if lora_scale is not None:
            kw["lora_scale"] = lora_scale
        if self.family == "sd1":
            out = pipe.encode_prompt("a cat", **kw)
        elif self.family == "sdxl":
            out = pipe.encode_prompt("a cat", **kw)
        else:
            out = pipe.encode_prompt("a cat", "a cat", "a cat", max_sequence_length=8, **kw)
        return [t for t in out if t is not None]

    # ------------------------------------------------------------- reference
    def expected_weight(self, comp: str, path: str, contribs: Sequence[Contribution]) -> Tensor:
        key = (comp, path, tuple((f, v, freeze(s), m) for f, v, s, m in contribs))
        w = self._w_cache.get(key)
        if w is None:
            if len(self._w_cache) > 20000:
                self._w_cache.clear()
            w = self._w_cache[key] = self._expected_weight(comp, path, contribs)
        return w

    def _expected_weight(self, comp: str, path: str, contribs: Sequence[Contribution]) -> Tensor:
        w = self.w0[comp][f"{path}.weight"].double()
        for fkey, variant, spec, mult in contribs:
            d = self.file(fkey, variant).deltas.get(comp, {}).get(path)
            if d is not None:
                f = module_factor(self.family, spec, path) * mult if comp == self.denoiser else float(spec) * mult
                if f != 0.0:
                    w = w + f * d
        return w.float()

    def _install(self, comp: str, contribs: Sequence[Contribution]) -> None:
        key = tuple((f, v, freeze(s), m) for f, v, s, m in contribs)
        if self._installed.get(comp) == key:
            return
        for path, mod in self.touched[comp].items():
            mod.weight.data.copy_(self.expected_weight(comp, path, contribs))
        self._installed[comp] = key

    def reference_output(self, comp: str, contribs: Sequence[Contribution]) -> Tensor:
        key = (comp, tuple((f, v, freeze(s), m) for f, v, s, m in contribs))
        out = self._out_cache.get(key)
        if out is None:
            self._install(comp, contribs)
            if len(self._out_cache) > 20000:
                self._out_cache.clear()
            out = self._out_cache[key] = self.component_output(self.ref, comp)
        return out

    def reference_prompt(self, state: RefState, scale: float) -> list[Tensor]:
        tes = [c for c in self.comps if c != self.denoiser]
        per = {c: state.expected(c, scale) for c in tes}
        key = ("prompt", tuple((c, tuple((f, v, freeze(s), m) for f, v, s, m in per[c])) for c in tes))
        out = self._out_cache.get(key)
        if out is None:
            for c in tes:
                self._install(c, per[c])
            out = self._out_cache[key] = self.prompt_embeds(self.ref, None)
        return out

    # ------------------------------------------------------------- checks
    @staticmethod
    def _close(comp: str, got: Tensor, ref: Tensor, what: str) -> None:
        if got.shape != ref.shape:
            raise StepFailure("output", comp, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}")
        err = float((got - ref).abs().max())
        bound = TOL * max(1.0, float(ref.abs().max()))
        if not err <= bound:
            raise StepFailure("output", comp, f"{what}: max|Δ| = {err:.3g} > {bound:.3g}")

    def pipe_modules(self, pipe: Any) -> dict[str, dict[str, nn.Module]]:
        """The modules of ``pipe`` that some file targets (lorakit never replaces modules: valid for its life)."""
        return {c: {p: getattr(pipe, c).get_submodule(p) for p in self.touched[c]} for c in self.comps}

    def check_weights(self, pipe: Any, state: RefState, mods: dict[str, dict[str, nn.Module]] | None) -> None:
        """Bit-exact base where nothing is fused (or disabled), ≈ base + fused elsewhere. ``mods``: check only
        those modules' weights and biases (every step); ``None``: every parameter and buffer (sequence end)."""
        for comp in self.comps:
            fused_now = state.enabled and bool(state.fused[comp])
            free = not state.enabled and not BITS_WHILE_DISABLED and bool(state.fused[comp])
            expect = state.baked[comp] + (state.fused_contribs(comp) if fused_now else [])
            bits = state.base_bits[comp]
            if mods is None:
                items = list(getattr(pipe, comp).state_dict().items())
            else:
                items = []
                for path, m in mods[comp].items():
                    items.append((f"{path}.weight", m.weight.detach()))
                    if m.bias is not None:
                        items.append((f"{path}.bias", m.bias.detach()))
            for name, t in items:
                path = name[: -len(".weight")] if name.endswith(".weight") else None
                if path in self.touched[comp] and (fused_now or free):
                    if free:
                        continue
                    exp = self.expected_weight(comp, path, expect)
                    err = float((t - exp).abs().max())
                    if not err <= TOL * max(1.0, float(exp.abs().max())):
                        raise StepFailure("fused weight", comp, f"{path}: max|W - (base + fused)| = {err:.3g}")
                    continue
                ref = bits.get(name, self.w0[comp][name])
                if not _bits_equal(t, ref):
                    why = "pipeline disabled" if not state.enabled else "nothing fused"
                    diff = float((t.double() - ref.double()).abs().max()) if t.shape == ref.shape else float("nan")
                    raise StepFailure("weights not base", comp, f"{name} differs from the base ({why}; max|Δ| {diff:.3g})")

    def check(self, pipe: Any, state: RefState, scale: float | None, mods: dict[str, dict[str, nn.Module]] | None) -> None:
        # weights first: they name the module (outputs only tell that something is off)
        self.check_weights(pipe, state, mods)
        for comp in self.comps:
            got = self.component_output(pipe, comp, scale if comp == self.denoiser else None)
            ref = self.reference_output(comp, state.expected(comp, scale if (scale is not None and comp == self.denoiser) else 1.0))
            self._close(comp, got, ref, "output" if scale is None or comp != self.denoiser else f"output at call scale {scale}")
        if scale is not None:
            got_p = self.prompt_embeds(pipe, scale)
            ref_p = self.reference_prompt(state, scale)
            for i, (a, b) in enumerate(zip(got_p, ref_p)):
                self._close("text encoders", a, b, f"encode_prompt(lora_scale={scale}) output {i}")

    def after_unload(self, pipe: Any, state: RefState) -> None:
        """Baked modules: their exact base is now what lorakit left (checked ≈ formula by ``check``)."""
        for comp in self.comps:
            if state.baked[comp]:
                sd = getattr(pipe, comp).state_dict()
                for path in self.touched[comp]:
                    state.base_bits[comp][f"{path}.weight"] = sd[f"{path}.weight"].detach().clone()

    def _check_baked(self, pipe: Any, state: RefState) -> None:
        for comp in self.comps:
            if not state.baked[comp]:
                continue
            sd = getattr(pipe, comp).state_dict()
            for path in self.touched[comp]:
                exp = self.expected_weight(comp, path, state.baked[comp])
                t = sd[f"{path}.weight"]
                err = float((t - exp).abs().max())
                if not err <= TOL * max(1.0, float(exp.abs().max())):
                    raise StepFailure("unload baked weight", comp, f"{path}: max|W - (base + fused at unload)| = {err:.3g}")

    # ------------------------------------------------------------- running
    def new_pipe(self) -> Any:
        """A fresh attached pipeline: its LoRA-loadable components are deep copies of the base's; the others (VAE,
        tokenizers, scheduler), which lorakit never touches, are shared (copying them dominated the cost)."""
        import lorakit

        pipe = copy.copy(self.base)
        pipe.__dict__ = dict(self.base.__dict__)
        for c in self.comps:
            pipe.__dict__[c] = copy.deepcopy(getattr(self.base, c))
        return lorakit.attach(pipe)

    def run(
        self,
        steps: Sequence[Step] | None = None,
        *,
        rng: random.Random | None = None,
        length: int = 0,
        seed: int | None = None,
    ) -> tuple[list[Step], Failure | None]:
        """Replay ``steps`` (skipping those invalid in the reference state), or generate ``length`` steps with
        ``rng``. Returns the executed steps and the first failure (None: every check passed)."""
        pipe = self.new_pipe()
        mods = self.pipe_modules(pipe)
        state = RefState(self.comps)
        gen = Generator(self, rng) if rng is not None else None
        source: Iterator[Step] = iter(steps) if steps is not None else (gen.next(state) for _ in range(length))  # type: ignore[union-attr]
        done: list[Step] = []
        for step in source:
            if not step.valid(self, state):
                continue
            done.append(step)
            try:
                try:
                    step.apply(self, pipe)
                except Exception as exc:  # noqa: BLE001 - a valid call must not raise
                    msg = str(exc).splitlines()[0] if str(exc) else ""
                    raise StepFailure("raised", type(exc).__name__, msg[:300]) from exc
                step.update(self, state)
                if isinstance(step, Unload):
                    self._check_baked(pipe, state)
                    self.after_unload(pipe, state)
                self.check(pipe, state, step.call_scale(), None if isinstance(step, Unload) else mods)
            except StepFailure as f:
                return done, Failure(self.family, done, f.kind, f.comp, f.detail, state.summary(), seed)
        try:
            self.check_weights(pipe, state, None)
        except StepFailure as f:
            return done, Failure(self.family, done, f.kind, f.comp, f.detail + " (full check at the end)", state.summary(), seed)
        return done, None

    def shrink(self, failure: Failure, budget: int = 200) -> Failure:
        """Remove steps while a failure of the same signature remains (greedy, chunks then single steps)."""
        best = failure
        steps = list(failure.steps)
        runs = 0
        chunk = max(1, len(steps) // 2)
        while chunk >= 1 and runs < budget:
            i = 0
            changed = False
            while i < len(steps) and runs < budget:
                cand = steps[:i] + steps[i + chunk :]
                runs += 1
                done, f = self.run(cand)
                if f is not None and f.signature == failure.signature:
                    steps = f.steps
                    best = Failure(f.family, f.steps, f.kind, f.comp, f.detail, f.state, failure.seed)
                    changed = True
                else:
                    i += chunk
            if not changed:
                chunk //= 2
        return best


def sequence_seed(base: int, family: str, i: int) -> int:
    return zlib.crc32(f"{base}/{family}/{i}".encode())


def random_sequence(h: Harness, seed: int) -> tuple[list[Step], Failure | None]:
    rng = random.Random(seed)
    return h.run(rng=rng, length=rng.randint(8, 25), seed=seed)


def explore(
    family: str, n: int, base_seed: int = 0, stop_first: bool = True, shrink_budget: int = 200, log: Callable[[str], None] | None = None
) -> tuple[list[Failure], int]:
    """Run ``n`` random sequences; returns the (shrunk) failures, one per distinct signature, and the step count."""
    h = Harness(family)
    seen: dict[tuple[str, str, str], Failure] = {}
    total = 0
    for i in range(n):
        seed = sequence_seed(base_seed, family, i)
        done, f = random_sequence(h, seed)
        total += len(done)
        if f is None:
            continue
        if f.signature not in seen:
            small = h.shrink(f, shrink_budget)
            seen[f.signature] = small
            if log:
                log(f"--- sequence {i}: {small.render(h)}\n")
            if stop_first:
                break
    return list(seen.values()), total


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--family", choices=FAMILIES, action="append")
    ap.add_argument("-n", "--sequences", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--all", action="store_true", help="go on after a failure; report each distinct signature once")
    ap.add_argument("--shrink", type=int, default=300, help="replay budget of the shrinker")
    ap.add_argument("--sequence-seed", type=int, help="re-run the one sequence a failure report names (and shrink it)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import logging

    for name in ("diffusers", "transformers", "peft", "lorakit"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if args.sequence_seed is not None:
        h = Harness((args.family or ["sd1"])[0])
        done, f = random_sequence(h, args.sequence_seed)
        if f is None:
            print(f"{len(done)} steps, no failure:\n" + "\n".join(f"{i:>3}. {st}" for i, st in enumerate(done, 1)))
            return 0
        print(f.render(h), "\n\nshrunk:\n" + h.shrink(f, args.shrink).render(h), sep="")
        return 1
    bad = 0
    for fam in args.family or list(FAMILIES):
        t = time.time()
        fails, steps = explore(fam, args.sequences, args.seed, not args.all, args.shrink, log=lambda s: print(s, flush=True))
        print(f"{fam}: {args.sequences} sequences, {steps} steps, {len(fails)} distinct failure(s), {time.time() - t:.0f}s", flush=True)
        bad += len(fails)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(_main())

