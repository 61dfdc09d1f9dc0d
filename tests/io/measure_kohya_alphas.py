"""Which per-module alpha mixes in a kohya file does diffusers 0.42.1 scale wrongly? Measured, not read from its code.

``python tests/io/measure_kohya_alphas.py`` prints the markdown table of ``docs/formats.md`` ("Alphas in kohya files
and diffusers"); ``test_io_diffusers_alphas.py`` pins the same results. Each case is a kohya file (lorakit's kohya
writer: ``lora_unet_*`` / ``lora_te*_*`` + ``.alpha`` per module, SGM names for SDXL) on every attention,
feed-forward, projection and resnet module of a tiny SD1 / SDXL pipeline and the text encoders' attention and MLP.
diffusers loads it (``load_lora_weights``, PEFT underneath) and the scale PEFT gives each module
(``layer.scaling[adapter]``) is compared with kohya's rule, which sd-scripts and LyCORIS apply at training time and
lorakit at load time: ``alpha / rank``, where a missing ``.alpha`` or ``alpha = 0`` means ``alpha = rank``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.formats import from_canonical
from lorakit.kinds import LoRA
from lorakit.tiny import tiny_pipeline

ATTENTION = (".to_q", ".to_k", ".to_v", ".to_out.0")
#: rank and alpha of one module: (component, module path, module) -> (rank, alpha), or None to leave it out
Rule = Callable[[str, str, nn.Module], tuple[int, float]]


@dataclass
class Case:
    name: str
    rule: Rule
    #: modules whose ``.alpha`` key is removed from the file (SD1 only: diffusers-derived kohya names)
    no_alpha: Callable[[str, str], bool] | None = None


@dataclass
class Result:
    modules: dict[str, int] = field(default_factory=dict)
    #: (component, module path) -> (kohya's scale, diffusers' scale)
    wrong: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    def wrong_by(self) -> Counter[str]:
        """Wrong modules per group: ``unet attention`` (to_q/k/v/out.0), ``unet other``, ``text_encoder``,
        ``text_encoder_2``."""
        out: Counter[str] = Counter()
        for comp, path in self.wrong:
            out[comp if comp != "unet" else "unet attention" if path.endswith(ATTENTION) else "unet other"] += 1
        return out


def _conv3(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size[0] == 3


def _te(comp: str) -> bool:
    return comp.startswith("text_encoder")


CASES: tuple[Case, ...] = (
    Case("every module α=8, r=4", lambda c, p, m: (4, 8.0)),
    Case("kohya LoCon: linear α=8/r=16, 3×3 conv α=1/r=8", lambda c, p, m: (8, 1.0) if _conv3(m) else (16, 8.0)),
    Case("one α per component (UNet α=8, text encoders α=1)", lambda c, p, m: (4, 1.0 if _te(c) else 8.0)),
    Case("ranks differ (to_q r=2, rest r=4), α=4 everywhere", lambda c, p, m: (2 if p.endswith(".to_q") else 4, 4.0)),
    Case("UNet feed-forward α=1, rest α=8", lambda c, p, m: (4, 1.0 if c == "unet" and ".ff." in p else 8.0)),
    Case("UNet resnet convs α=1, rest α=8", lambda c, p, m: (4, 1.0 if c == "unet" and ".resnets." in p else 8.0)),
    Case("UNet to_q α=1, rest α=8", lambda c, p, m: (4, 1.0 if c == "unet" and p.endswith(".to_q") else 8.0)),
    Case("UNet attention α=1, rest α=8", lambda c, p, m: (4, 1.0 if c == "unet" and p.endswith(ATTENTION) else 8.0)),
    Case("text encoders: q_proj α=1, rest α=8", lambda c, p, m: (4, 1.0 if _te(c) and p.endswith("q_proj") else 8.0)),
    Case("text encoders: MLP α=1, rest α=8", lambda c, p, m: (4, 1.0 if _te(c) and ".mlp." in p else 8.0)),
    Case("UNet feed-forward α=0 (kohya: α = rank), rest α=8",
         lambda c, p, m: (4, 0.0 if c == "unet" and ".ff." in p else 8.0)),
    Case("UNet feed-forward without .alpha (kohya: α = rank), rest α=8", lambda c, p, m: (4, 8.0),
         no_alpha=lambda c, p: c == "unet" and ".ff." in p),
)


def _targets(comp: str, model: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for p, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        if _te(comp):
            keep = ".self_attn." in p or ".mlp." in p
        else:
            keep = (".attn" in p or ".ff." in p or p.endswith(("proj_in", "proj_out"))
                    or (".resnets." in p and p.endswith(("conv1", "conv2", "time_emb_proj"))))
        if keep:
            out.append((p, m))
    return out


def _lora(m: nn.Module, rank: int, alpha: float, g: torch.Generator) -> LoRA:
    w = m.weight
    if w.dim() == 4:
        k = w.shape[-1]
        return LoRA(down=torch.randn(rank, w.shape[1], k, k, generator=g), up=torch.randn(w.shape[0], rank, 1, 1,
                    generator=g), alpha=alpha)
    return LoRA(down=torch.randn(rank, w.shape[1], generator=g), up=torch.randn(w.shape[0], rank, generator=g),
                alpha=alpha)


def measure(family: str, case: Case) -> Result:
    """Write ``case`` as a kohya file for the tiny ``family`` pipeline, load it with diffusers, compare scales."""
    g = torch.Generator().manual_seed(0)
    pipe = tiny_pipeline(family)
    comps = [c for c in ("unet", "text_encoder", "text_encoder_2") if isinstance(getattr(pipe, c, None), nn.Module)]
    adapters = {c: {p: _lora(m, *case.rule(c, p, m), g) for p, m in _targets(c, getattr(pipe, c))} for c in comps}
    sd, _ = from_canonical(adapters, "kohya", family=family)
    dropped: set[tuple[str, str]] = set()
    if case.no_alpha is not None:
        if family != "sd1":
            raise ValueError("no_alpha cases use SD1's diffusers-derived kohya names")
        prefix = {"unet": "lora_unet_", "text_encoder": "lora_te_text_model_"}
        for c, mods in adapters.items():
            for p in mods:
                if case.no_alpha(c, p):
                    dropped.add((c, p))
                    del sd[f"{prefix[c]}{p.replace('.', '_')}.alpha"]
    ref = tiny_pipeline(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.load_lora_weights(copy.deepcopy(sd), adapter_name="x")
    result = Result()
    for c, mods in adapters.items():
        layers = dict(getattr(ref, c).named_modules())
        result.modules[c] = len(mods)
        for p, kind in mods.items():
            alpha = None if (c, p) in dropped else kind.alpha
            want = (alpha or kind.rank) / kind.rank  # kohya: a missing alpha or alpha 0 means alpha = rank
            scaling = getattr(layers.get(p), "scaling", {})
            got = float(scaling.get("x", 0.0)) if isinstance(scaling, dict) else 0.0
            if abs(got - want) > 1e-6 * max(1.0, want):
                result.wrong[(c, p)] = (want, got)
    return result


def table(families: tuple[str, ...] = ("sd1", "sdxl")) -> str:
    """The markdown table: per case and family, the modules diffusers scales wrongly (of all), by group."""
    lines = ["| kohya file (every module has its own `.alpha` unless said) | "
             + " | ".join(f"tiny {f.upper()}: wrong / modules" for f in families) + " |",
             "|---|" + "---|" * len(families)]
    for case in CASES:
        cells = []
        for fam in families:
            if case.no_alpha is not None and fam != "sd1":
                cells.append("n/a")
                continue
            res = measure(fam, case)
            total = sum(res.modules.values())
            by = res.wrong_by()
            cells.append(f"**{len(res.wrong)}** / {total} ({', '.join(f'{k} {n}' for k, n in sorted(by.items()))})"
                         if res.wrong else f"0 / {total}")
        lines.append(f"| {case.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    print(table())
