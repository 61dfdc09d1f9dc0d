"""Random sequences of pipeline LoRA calls against an independent reference (issue 11 C; see ``state_model``).

``LORAKIT_STATE_SEQUENCES`` (default 150) is the number of sequences over all families (45 % SD1, 15 % SDXL, whose
tiny UNet is the slowest, 40 % SD3); ``LORAKIT_STATE_SEED`` picks another set of sequences; ``LORAKIT_STATE_SHRINK`` is the replay budget
of the shrinker that turns a failing sequence into a short one (default 150). A failure prints the shrunk
sequence as code, the reference state and what differed.
"""

from __future__ import annotations

import os
from functools import cache

import pytest
import state_model as sm
import torch

SEQUENCES = int(os.environ.get("LORAKIT_STATE_SEQUENCES", "150"))
SEED = int(os.environ.get("LORAKIT_STATE_SEED", "0"))
SHRINK = int(os.environ.get("LORAKIT_STATE_SHRINK", "150"))
SHARE = {"sd1": 0.45, "sdxl": 0.15, "sd3": 0.4}


@cache
def harness(family: str) -> sm.Harness:
    return sm.Harness(family)


def count(family: str) -> int:
    return max(1, round(SEQUENCES * SHARE[family]))


@pytest.mark.parametrize("family", sm.FAMILIES)
def test_random_sequences_match_the_reference(family: str) -> None:
    h = harness(family)
    for i in range(count(family)):
        seed = sm.sequence_seed(SEED, family, i)
        _, failure = sm.random_sequence(h, seed)
        if failure is not None:
            small = h.shrink(failure, SHRINK)
            pytest.fail(
                f"{family} sequence {i} (seed {seed}) breaks the reference; shrunk from {len(failure.steps)} to "
                f"{len(small.steps)} steps:\n{small.render(h)}\n\nas generated:\n{failure.render(h)}",
                pytrace=False,
            )


# ------------------------------------------------------------------------------------------------ the harness itself
@pytest.mark.parametrize("family", sm.FAMILIES)
def test_each_file_alone_fused_unfused_and_scaled(family: str) -> None:
    """Every generated file (each kind, rank and target set, two variants) loads and matches the reference."""
    h = harness(family)
    for spec in h.catalog:
        for variant in (0, 1):
            steps = [
                sm.Load(spec.key, variant, "a"),
                sm.Call(0.5),
                sm.Fuse((), 0.5, None),
                sm.Unfuse(()),
                sm.Unload(),
            ]
            done, failure = h.run(steps)
            assert failure is None, failure.render(h)
            assert len(done) == len(steps)


@pytest.mark.parametrize("family", sm.FAMILIES)
def test_every_file_moves_every_component_it_targets(family: str) -> None:
    """A missing or mis-weighted adapter must show: each file changes each component's output ≫ the tolerance."""
    h = harness(family)
    for spec in h.catalog:
        for comp in spec.components():
            with_file = h.reference_output(comp, [(spec.key, 0, 1.0, 1.0)])
            base = h.reference_output(comp, [])
            rel = float((with_file - base).abs().max()) / max(1.0, float(base.abs().max()))
            assert rel > 100 * sm.TOL, f"{spec.key} barely changes {comp} ({rel:.3g})"


def test_the_checks_catch_a_wrong_weight() -> None:
    """The reference says weight 1.0; lorakit was told 0.75 behind its back: the output check must fail."""
    h = harness("sd1")
    pipe = h.new_pipe()
    state = sm.RefState(h.comps)
    step = sm.Load("F1", 0, "a")
    step.apply(h, pipe)
    step.update(h, state)
    h.check(pipe, state, None, None)
    pipe.set_adapters(["a"], [0.75])
    with pytest.raises(sm.StepFailure, match=r"output \[unet\]"):
        h.check(pipe, state, None, None)


def test_the_checks_catch_a_changed_bit() -> None:
    h = harness("sd1")
    pipe = h.new_pipe()
    state = sm.RefState(h.comps)
    w = pipe.unet.conv_in.weight
    with torch.no_grad():
        w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(10.0))
    with pytest.raises(sm.StepFailure, match="conv_in.weight differs from the base"):
        h.check(pipe, state, None, None)


@pytest.mark.parametrize(
    ("spec", "path", "weight"),
    [
        ({"down": 0.5, "up": {"block_0": [1.0, 0.0, 0.25]}}, "up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_q", 0.25),
        ({"down": 0.5, "up": {"block_0": [1.0, 0.0, 0.25]}}, "up_blocks.0.resnets.1.conv1", 0.0),
        ({"down": 0.5, "up": {"block_0": [1.0, 0.0, 0.25]}}, "up_blocks.0.upsamplers.0.conv", 1.0),
        ({"down": 0.5, "up": {"block_0": [1.0, 0.0, 0.25]}}, "down_blocks.0.downsamplers.0.conv", 0.5),
        ({"down": 0.5, "up": {"block_0": [1.0, 0.0, 0.25]}}, "up_blocks.1.resnets.0.conv1", 1.0),
        ({"down": {"block_1": [0.75]}}, "down_blocks.1.attentions.1.proj_in", 0.75),
        ({"down": 0.5, "mid": 0.25}, "mid_block.resnets.1.conv2", 0.25),
        ({"down": 0.5, "mid": 0.25, "up": 0.0}, "conv_in", 1.0),
        ({"down": 0.5, "mid": 0.25, "up": 0.0}, "time_embedding.linear_1", 1.0),
    ],
)
def test_reference_block_rule(spec: dict, path: str, weight: float) -> None:
    """The reference's own block → module rule (lorakit/blocks.py docstring, as diffusers)."""
    assert sm.module_factor("sd1", spec, path) == weight


def test_reference_block_rule_sd3() -> None:
    assert sm.module_factor("sd3", {"block_1": 0.5}, "transformer_blocks.1.attn.to_q") == 0.5
    assert sm.module_factor("sd3", {"block_1": 0.5}, "transformer_blocks.0.attn.to_q") == 1.0
    assert sm.module_factor("sd3", [0.25, 0.5], "transformer_blocks.0.ff.net.0.proj") == 0.25
    assert sm.module_factor("sd3", [0.25, 0.5], "proj_out") == 1.0
