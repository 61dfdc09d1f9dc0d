"""The same kind of random sequences, side by side with diffusers 0.42.1 + PEFT, where diffusers is right.

Restricted to what diffusers + PEFT get right (issue 11 C): loads of diffusers PEFT-style files whose keys name
the model's own module paths (diffusers raises ``IndexError`` on ``text_encoder_2.encoder...`` keys for a
``CLIPTextModelWithProjection``; T5 is not LoRA-loadable in diffusers), ``set_adapters`` with plain numbers or
per-component numbers (no block dicts), ``fuse_lora`` at ``lora_scale=1`` of the active adapters, ``unfuse_lora``
(components always named: diffusers refuses ``components=[]``),
``delete_adapters``, ``unload_lora_weights`` and nonzero call-time scales. Not compared, and why:

* ``disable_lora``: PEFT unmerges a merged layer on the first disabled forward, so fused state is lost;
* anything but ``unfuse`` / calls while something is fused: PEFT skips every unfused adapter of a merged layer,
  ``set_adapters`` changes the scaling that the later unmerge subtracts, and a refuse is a no-op;
* ``lora_scale != 1`` in ``fuse_lora``: diffusers leaves the layer's scaling multiplied by it after unfusing;
* call-time scale 0: diffusers' ``unscale_lora_layers`` then resets every adapter weight to 1.0;
* text-encoder loads after ``encode_prompt(lora_scale=s)``: diffusers keeps ``pipe._lora_scale = s`` and starts
  every later text-encoder adapter at weight s; the test resets that attribute after each step;
* deleting the last adapter of a component's PEFT active list (the names last given to ``set_adapters``, loaded
  there or not) while the component holds others: PEFT then activates the first remaining one (the reference
  leaves the component with no active adapter); such deletes delete everything;
* hotswap, block weights, kohya / LoHa files: not part of this comparison (the main state test covers them).

After every step: diffusers vs the reference of ``state_model`` and lorakit vs diffusers, within ``PARITY_TOL``.
``LORAKIT_STATE_PARITY_SEQUENCES`` (default 12, over all families) sets the count.
"""

from __future__ import annotations

import copy
import os
import random
from functools import cache
from typing import Any

import pytest
import state_model as sm
import torch
from torch import Tensor

SEQUENCES = int(os.environ.get("LORAKIT_STATE_PARITY_SEQUENCES", "12"))
SEED = int(os.environ.get("LORAKIT_STATE_SEED", "0"))
SHARE = {"sd1": 0.5, "sdxl": 0.25, "sd3": 0.25}
PARITY_TOL = 1e-4
#: diffusers 0.42.1's LoRA-loadable components of each family
DIFFUSERS_COMPONENTS = {"sd1": ("unet", "text_encoder"), "sdxl": ("unet", "text_encoder", "text_encoder_2"), "sd3": ("transformer", "text_encoder", "text_encoder_2")}


@cache
def harness(family: str) -> sm.Harness:
    return sm.Harness(family)


def parity_files(h: sm.Harness) -> list[str]:
    """PEFT-style files whose keys are the model's own module paths, for components diffusers loads into."""
    out = []
    for spec in h.catalog:
        if spec.kind != "peft" or any(c not in DIFFUSERS_COMPONENTS[h.family] for c in spec.components()):
            continue
        ok = True
        for comp, mods in sm.target_modules(h.base, spec).items():
            model = getattr(h.base, comp)
            ok &= all(sm._peft_path(model, p, spec.te_text_model) == p for p in mods)
        if ok:
            out.append(spec.key)
    return out


class ParityGenerator:
    def __init__(self, h: sm.Harness, rng: random.Random) -> None:
        self.h, self.rng, self.files = h, rng, parity_files(h)
        #: per component, the adapter list PEFT's layers hold as active (set_adapters names, loaded there or not)
        self.peft_active: dict[str, list[str]] = {c: [] for c in h.comps}

    def next(self, s: sm.RefState) -> sm.Step:
        step = self._next(s)
        if isinstance(step, sm.Load):
            for c in self.h.spec(step.file).components():
                self.peft_active[c] = [step.name]
        elif isinstance(step, sm.SetAdapters):
            self.peft_active = {c: list(step.names) for c in self.h.comps}
        elif isinstance(step, sm.Delete):
            self.peft_active = {c: [n for n in v if n not in step.names] for c, v in self.peft_active.items()}
        elif isinstance(step, sm.Unload):
            self.peft_active = {c: [] for c in self.h.comps}
        return step

    def _next(self, s: sm.RefState) -> sm.Step:
        rng = self.rng
        loaded = list(s.adapters)
        free = [n for n in sm.NAMES if n not in s.adapters]
        fused = any(s.fused[c] for c in s.comps)
        if fused:
            options = [("unfuse", 4.0), ("call", 2.0)]
        else:
            options = [("call", 1.5), ("unload", 0.5)]
            if free and len(loaded) < sm.MAX_LOADED:
                options.append(("load", 6.0 if len(loaded) < 2 else 2.5))
            if loaded:
                options += [("set_adapters", 3.0), ("fuse", 5.0), ("delete", 2.5)]
        op = rng.choices([o for o, _ in options], weights=[w for _, w in options])[0]
        comps = list(DIFFUSERS_COMPONENTS[self.h.family])
        if op == "load":
            return sm.Load(rng.choice(self.files), rng.choice([0, 0, 1]), rng.choice(free))
        if op == "set_adapters":
            names = rng.sample(loaded, rng.randint(1, len(loaded)))
            roll = rng.random()
            if roll < 0.2:
                return sm.SetAdapters(tuple(names), None)
            if roll < 0.35:
                return sm.SetAdapters(tuple(names), rng.choice(sm.WEIGHT_VALUES))
            weights: list[Any] = []
            for n in names:
                if rng.random() < 0.6:
                    weights.append(rng.choice(sm.WEIGHT_VALUES))
                else:
                    mine = [c for c in comps if c in s.adapters[n].comps]
                    weights.append({c: rng.choice(sm.WEIGHT_VALUES) for c in rng.sample(mine, rng.randint(1, len(mine)))})
            return sm.SetAdapters(tuple(names), weights)
        if op == "fuse":
            fcomps = comps if rng.random() < 0.6 else rng.sample(comps, rng.randint(1, len(comps)))
            return sm.Fuse(tuple(fcomps), 1.0, None)
        if op == "unfuse":
            return sm.Unfuse(tuple(comps))
        if op == "delete":
            names = rng.sample(loaded, rng.randint(1, len(loaded)))
            for c in s.comps:  # PEFT would activate another adapter here (see the module docstring)
                held = self.peft_active[c]
                left_loaded = [n for n in s.loaded_in(c) if n not in names]
                if any(n in held for n in names) and not [n for n in held if n not in names] and left_loaded:
                    names = loaded
            return sm.Delete(tuple(names), as_str=len(names) == 1 and rng.random() < 0.5)
        if op == "call":
            return sm.Call(rng.choice([0.5, 1.5, -1.0]))
        return sm.Unload()


def _close(what: str, got: Tensor, ref: Tensor) -> str | None:
    err = float((got - ref).abs().max())
    bound = PARITY_TOL * max(1.0, float(ref.abs().max()))
    return None if err <= bound else f"{what}: max|Δ| = {err:.3g} > {bound:.3g}"


def compare(h: sm.Harness, lk: Any, df: Any, state: sm.RefState, scale: float | None) -> str | None:
    for comp in DIFFUSERS_COMPONENTS[h.family]:
        s = scale if comp == h.denoiser else None
        d = h.component_output(df, comp, s)
        r = h.reference_output(comp, state.expected(comp, 1.0 if s is None else s))
        k = h.component_output(lk, comp, s)
        for msg in (_close(f"diffusers {comp} vs reference", d, r), _close(f"lorakit {comp} vs diffusers", k, d)):
            if msg:
                return msg
    if scale is not None:
        dp, rp, kp = h.prompt_embeds(df, scale), h.reference_prompt(state, scale), h.prompt_embeds(lk, scale)
        for i, (d, r, k) in enumerate(zip(dp, rp, kp)):
            for msg in (_close(f"diffusers encode_prompt[{i}] vs reference", d, r), _close(f"lorakit encode_prompt[{i}] vs diffusers", k, d)):
                if msg:
                    return msg
    return None


def run_parity(h: sm.Harness, seed: int) -> tuple[list[sm.Step], str | None]:
    rng = random.Random(seed)
    gen = ParityGenerator(h, rng)
    lk, df = h.new_pipe(), copy.deepcopy(h.base)
    state = sm.RefState(h.comps, load_semantics="diffusers")
    done: list[sm.Step] = []
    for _ in range(rng.randint(8, 20)):
        step = gen.next(state)
        done.append(step)
        for who, pipe in (("lorakit", lk), ("diffusers", df)):
            try:
                step.apply(h, pipe)
            except Exception as exc:  # noqa: BLE001 - reported with the sequence
                return done, f"{who} raised {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        step.update(h, state)
        msg = compare(h, lk, df, state, step.call_scale())
        if msg:
            return done, msg
        # diffusers' encode_prompt(lora_scale=s) leaves pipe._lora_scale = s, and every later text-encoder load
        # then starts at weight s (load_lora_weights passes lora_scale=self.lora_scale): not compared, reset
        df.__dict__.pop("_lora_scale", None)
    return done, None


@pytest.mark.parametrize("family", sm.FAMILIES)
def test_random_sequences_match_diffusers(family: str) -> None:
    pytest.importorskip("peft")
    h = harness(family)
    if not parity_files(h):
        pytest.skip(f"no PEFT-style file that diffusers loads for {family}")
    with torch.no_grad():
        for i in range(max(1, round(SEQUENCES * SHARE[family]))):
            seed = sm.sequence_seed(SEED, f"parity-{family}", i)
            done, msg = run_parity(h, seed)
            if msg:
                lines = "\n".join(f"{j:>3}. {st}" for j, st in enumerate(done, 1))
                pytest.fail(f"{family} parity sequence {i} (seed {seed}):\n{lines}\n  -> {msg}", pytrace=False)
