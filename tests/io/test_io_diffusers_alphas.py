"""Pins exactly which per-module alpha mixes of a kohya file diffusers 0.42.1 scales wrongly (with transformers
5.23 and PEFT 0.21), measured on tiny SD1 / SDXL pipelines by ``measure_kohya_alphas.py`` (the table in
docs/formats.md, "Alphas in kohya files and diffusers").

The model of diffusers' behaviour that every case is checked against, module by module: diffusers gives a module
the most common alpha of its component (PEFT's ``lora_alpha``) unless its own alpha reaches it through
``alpha_pattern``, and the pattern reaches a module only for UNet modules other than the attention projections
(to_q / to_k / to_v / to_out.0) and for ``text_encoder_2``'s MLP; ``text_encoder`` (transformers 5 names it without
``text_model.``) gets no pattern at all. A missing ``.alpha`` is not ``alpha = rank`` for diffusers but the most
common alpha, and ``alpha = 0`` stays 0 (kohya and lorakit: ``alpha = rank`` in both cases).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter

import pytest
from measure_kohya_alphas import ATTENTION, CASES, Case, _targets, measure

from lorakit.tiny import tiny_pipeline as _tiny_pipeline


@functools.cache
def tiny_pipeline(family: str) -> object:
    return _tiny_pipeline(family)  # only read here (module names and shapes)


def predicted_wrong(family: str, case: Case) -> set[tuple[str, str]]:
    pipe = tiny_pipeline(family)
    wrong = set()
    for comp in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, comp, None)
        if model is None:
            continue
        mods = {p: case.rule(comp, p, m) for p, m in _targets(comp, model)}
        missing = {p for p in mods if case.no_alpha is not None and case.no_alpha(comp, p)}
        common = Counter(a for p, (_, a) in mods.items() if p not in missing).most_common(1)[0][0]
        for p, (rank, alpha) in mods.items():
            reaches = (comp == "unet" and not p.endswith(ATTENTION)) or (comp == "text_encoder_2" and ".mlp." in p)
            used = alpha if (p not in missing and (reaches or alpha == common)) else common
            kohya = alpha if (p not in missing and alpha) else rank
            if used != kohya:
                wrong.add((comp, p))
    return wrong


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_which_alpha_mixes_diffusers_scales_wrongly(family: str, case: Case, quiet_libraries: None) -> None:
    if case.no_alpha is not None and family != "sd1":
        pytest.skip("the no-alpha case uses SD1's kohya names")
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    result = measure(family, case)
    assert set(result.wrong) == predicted_wrong(family, case)
    if case.name.startswith(("every module", "kohya LoCon", "one α per component", "ranks differ", "UNet feed-forward α=1",
                             "UNet resnet")):
        assert not result.wrong  # the mixes diffusers gets right, the real LoCon layout among them
    if case.name.startswith(("UNet to_q", "text encoders", "UNet feed-forward α=0", "UNet feed-forward without")):
        assert result.wrong
