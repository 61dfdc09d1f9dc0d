"""Per-sample adapters (``lorakit.per_sample``) and the adapter cache (``lorakit.AdapterCache``).

Reference: each row of a mixed batch against the same input run alone, as a batch of one, after ``set_adapters``
with that row's entry (``disable_lora`` for ``None``) — the definition of what ``per_sample`` must apply. Denoisers
and text encoders of every family; every adapter kind; classifier-free guidance and ``num_images_per_prompt`` through
a whole pipeline call.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import lorakit
from lorakit import errors
from lorakit.kinds import IA3, OFT, DoRA, Full, LoHa, LoKr, LoRA
from lorakit.tiny import tiny_pipeline

FAMILIES = ("sd1", "sdxl", "sd3", "flux", "amused")
DENOISER = {"sd1": "unet", "sdxl": "unet", "sd3": "transformer", "flux": "transformer", "amused": "transformer"}
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "proj_mlp", "q_proj", "v_proj", "fc1", "SelfAttention.q")
TOL = 1e-5


@cache
def _base(family: str) -> Any:
    return tiny_pipeline(family)


def _lora_dict(pipe: Any, family: str, seed: int, rank: int = 4) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    comps = [DENOISER[family], *[c for c in ("text_encoder", "text_encoder_2") if getattr(pipe, c, None) is not None]]
    for comp in comps:
        for path, mod in getattr(pipe, comp).named_modules():
            if isinstance(mod, nn.Linear) and path.endswith(TARGETS):
                # moderate deltas: a tiny random model amplifies batch-size rounding noise under very strong adapters
                sd[f"{comp}.{path}.lora_A.weight"] = torch.randn(rank, mod.in_features, generator=g) * 0.2
                sd[f"{comp}.{path}.lora_B.weight"] = torch.randn(mod.out_features, rank, generator=g) * 0.2
    return sd


@cache
def _loaded(family: str) -> Any:
    """The family's pipeline with four LoRAs (denoiser + text encoders), deep-copied per test."""
    pipe = lorakit.attach(copy.deepcopy(_base(family)))
    for i, name in enumerate("abcd"):
        pipe.load_lora_weights(_lora_dict(pipe, family, seed=10 + i, rank=2 + i), adapter_name=name)
    pipe.set_adapters(["a"])
    return pipe


def pipeline(family: str) -> Any:
    return copy.deepcopy(_loaded(family))


def denoiser_inputs(family: str, n: int, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    if family in ("sd1", "sdxl"):
        width = 32 if family == "sd1" else 64
        out: dict[str, Any] = dict(
            sample=torch.randn(n, 4, 8, 8, generator=g), timestep=10, encoder_hidden_states=torch.randn(n, 5, width, generator=g)
        )
        if family == "sdxl":
            out["added_cond_kwargs"] = {"text_embeds": torch.randn(n, 32, generator=g), "time_ids": torch.randn(n, 6, generator=g)}
        return out
    if family == "sd3":
        return dict(
            hidden_states=torch.randn(n, 16, 8, 8, generator=g),
            encoder_hidden_states=torch.randn(n, 7, 64, generator=g),
            pooled_projections=torch.randn(n, 64, generator=g),
            timestep=torch.full((n,), 10.0),
        )
    if family == "flux":
        ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
        return dict(
            hidden_states=torch.randn(n, 16, 64, generator=g),
            encoder_hidden_states=torch.randn(n, 7, 32, generator=g),
            pooled_projections=torch.randn(n, 32, generator=g),
            timestep=torch.full((n,), 0.6),
            img_ids=ids.reshape(16, 3),
            txt_ids=torch.zeros(7, 3),
            guidance=torch.full((n,), 3.5),
        )
    return dict(
        input_ids=torch.randint(0, 8, (n, 4, 4), generator=g),
        encoder_hidden_states=torch.randn(n, 5, 8, generator=g),
        pooled_text_emb=torch.randn(n, 8, generator=g),
        micro_conds=torch.randn(n, 5, generator=g),
    )


def _rows(inputs: dict[str, Any], j: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in inputs.items():
        if isinstance(v, dict):
            out[k] = _rows(v, j)
        elif isinstance(v, Tensor) and k not in ("img_ids", "txt_ids") and v.dim() >= 1 and v.shape[0] > 1:
            out[k] = v[j : j + 1]
        else:
            out[k] = v
    return out


@torch.no_grad()
def denoise(pipe: Any, family: str, inputs: dict[str, Any]) -> Tensor:
    out = getattr(pipe, DENOISER[family])(**inputs)
    return out[0] if isinstance(out, tuple) else getattr(out, "sample", out)


@torch.no_grad()
def encode(pipe: Any, component: str, ids: Tensor) -> Tensor:
    return getattr(pipe, component)(ids)[0]


def alone(pipe: Any, entry: Any, run: Callable[[], Tensor]) -> Tensor:
    """``run()`` after ``set_adapters`` with one per-sample entry (the reference), the pipeline restored after."""
    before = pipe.get_active_adapters()
    if entry is None:
        pipe.disable_lora()
    elif isinstance(entry, str):
        pipe.set_adapters([entry])
    else:
        pipe.set_adapters(list(entry), list(entry.values()))
    try:
        return run()
    finally:
        pipe.enable_lora()
        pipe.set_adapters(before)


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max()) / max(1e-6, float(b.abs().max()))


ENTRIES: list[list[Any]] = [
    ["b"],
    [None],
    ["a", "b"],
    [None, "c", {"b": 0.5, "d": -0.7}],
    ["d", "d", None, {"a": 0.3}],
    ["a", {"a": 1.0, "b": 0.5, "c": 0.25}, "c", "b", None, "d", {"d": 0.6}, "a"],
]


# ------------------------------------------------------------------------------------------------ components
@pytest.mark.parametrize("family", FAMILIES)
def test_each_denoiser_row_gets_its_own_mix(family: str) -> None:
    pipe = pipeline(family)
    for entries in ENTRIES:
        n = len(entries)
        inputs = denoiser_inputs(family, n, seed=n)
        with lorakit.per_sample(pipe, entries):
            batch = denoise(pipe, family, inputs)
        for j, entry in enumerate(entries):
            ref = alone(pipe, entry, lambda j=j, x=inputs: denoise(pipe, family, _rows(x, j)))
            assert rel(batch[j : j + 1], ref) <= TOL, f"{family} {entries}: row {j} ({entry!r})"


@pytest.mark.parametrize("family", FAMILIES)
def test_each_text_encoder_row_gets_its_own_mix(family: str) -> None:
    pipe = pipeline(family)
    entries = ENTRIES[3] + ENTRIES[4]
    ids = torch.randint(1, 40, (len(entries), 6), generator=torch.Generator().manual_seed(1))
    for comp in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, comp, None) is None or not lorakit.get_manager(getattr(pipe, comp), create=False):
            continue
        with lorakit.per_sample(pipe, entries):
            batch = encode(pipe, comp, ids)
        for j, entry in enumerate(entries):
            ref = alone(pipe, entry, lambda j=j, c=comp: encode(pipe, c, ids[j : j + 1]))
            assert rel(batch[j : j + 1], ref) <= TOL, f"{family} {comp}: row {j} ({entry!r})"


def test_classifier_free_guidance_and_images_per_prompt_rows() -> None:
    """The layouts pipelines build: [uncond | cond] halves, each sample's images contiguous."""
    pipe = pipeline("sd1")
    entries = ["a", None, {"b": 0.5, "c": 1.0}]
    for per_prompt, cfg in ((1, True), (2, False), (2, True), (3, True)):
        n = len(entries) * per_prompt * (2 if cfg else 1)
        inputs = denoiser_inputs("sd1", n, seed=n)
        with lorakit.per_sample(pipe, entries):
            for plan in pipe._lorakit_state.plans.values():
                plan.per_prompt = per_prompt  # what a pipeline call with num_images_per_prompt sets
            batch = denoise(pipe, "sd1", inputs)
        for j in range(n):
            i = (j % (len(entries) * per_prompt)) // per_prompt
            ref = alone(pipe, entries[i], lambda j=j, x=inputs: denoise(pipe, "sd1", _rows(x, j)))
            assert rel(batch[j : j + 1], ref) <= TOL, f"per_prompt={per_prompt} cfg={cfg}: row {j} -> sample {i}"


@pytest.mark.parametrize("family", ["sd1", "sd3"])
def test_a_whole_pipeline_call_matches_one_prompt_at_a_time(family: str) -> None:
    pipe = pipeline(family)
    prompts = ["a red cat", "a blue dog", "a green bird"]
    entries = ["b", None, {"c": 0.7, "a": 0.4}]
    kw: dict[str, Any] = dict(num_inference_steps=2, guidance_scale=5.0, output_type="latent", num_images_per_prompt=2)
    if family == "sd3":
        kw["max_sequence_length"] = 8
    shape = (6, 4, 8, 8) if family == "sd1" else (6, 16, 8, 8)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    size = dict(height=64, width=64) if family == "sd1" else dict(height=64, width=64)
    with lorakit.per_sample(pipe, entries):
        batch = pipe(prompt=prompts, latents=latents, **size, **kw).images
    for i, (prompt, entry) in enumerate(zip(prompts, entries)):
        def run(i: int = i, prompt: str = prompt) -> Tensor:
            return pipe(prompt=prompt, latents=latents[2 * i : 2 * i + 2], **size, **kw).images

        ref = alone(pipe, entry, run)
        assert rel(batch[2 * i : 2 * i + 2], ref) <= 1e-4, f"{family} prompt {i}"


def test_every_kind_applies_per_sample() -> None:
    pipe = pipeline("sd1")
    unet = pipe.unet
    mgr = lorakit.get_manager(unet)
    assert mgr is not None
    g = torch.Generator().manual_seed(5)
    linear = next(p for p, m in unet.named_modules() if p.endswith("attn1.to_q"))
    conv = next(p for p, m in unet.named_modules() if p.endswith("resnets.0.conv1"))
    w, c = unet.get_submodule(linear).weight, unet.get_submodule(conv).weight
    o, i = w.shape
    kinds = {
        "loha": {linear: LoHa(torch.randn(o, 2, generator=g), torch.randn(2, i, generator=g), torch.randn(o, 2, generator=g), torch.randn(2, i, generator=g))},
        "lokr": {linear: LoKr(w1=torch.randn(4, 4, generator=g) * 0.3, w2=torch.randn(o // 4, i // 4, generator=g) * 0.3)},
        "full": {conv: Full(diff=torch.randn(c.shape, generator=g) * 0.05)},
        "dora": {linear: DoRA(inner=LoRA(torch.randn(2, i, generator=g), torch.randn(o, 2, generator=g)), magnitude=torch.rand(o, generator=g) + 0.5)},
        "oft": {linear: OFT(blocks=torch.randn(o // 8, 8, 8, generator=g) * 0.1)},
        "ia3": {conv: IA3(weight=torch.randn(c.shape[0], generator=g) * 0.3)},
        "conv_lora": {conv: LoRA(torch.randn(2, *c.shape[1:], generator=g) * 0.3, torch.randn(c.shape[0], 2, 1, 1, generator=g) * 0.3)},
    }
    for name, mapping in kinds.items():
        mgr.add_adapter(name, mapping, activate=False)
    entries: list[Any] = [*kinds, None, {"loha": 0.5, "oft": 1.0, "a": 1.0}]
    inputs = denoiser_inputs("sd1", len(entries), seed=9)
    with lorakit.per_sample(pipe, entries):
        batch = denoise(pipe, "sd1", inputs)
    for j, entry in enumerate(entries):
        ref = alone(pipe, entry, lambda j=j, x=inputs: denoise(pipe, "sd1", _rows(x, j)))
        assert rel(batch[j : j + 1], ref) <= TOL, f"row {j} ({entry!r})"
        if entry is not None and j:
            assert rel(batch[j : j + 1], batch[0:1]) > 1e-3  # every kind changes the output


# ------------------------------------------------------------------------------------------------ state
def _state(pipe: Any) -> tuple:
    managers = pipe._lorakit_set().managers()
    return (
        pipe.get_active_adapters(),
        sorted(pipe.fused_loras),
        {c: (list(m.active), dict(m.weights), m.enabled, m.sample_plan) for c, m in managers.items()},
    )


def test_the_pipeline_state_is_unchanged_after_the_block_and_after_an_error() -> None:
    pipe = pipeline("sd1")
    pipe.set_adapters(["a", "b"], [0.5, {"unet": 0.25}])
    before = _state(pipe)
    with lorakit.per_sample(pipe, ["c", None]):
        denoise(pipe, "sd1", denoiser_inputs("sd1", 2))
    assert _state(pipe) == before
    with pytest.raises(RuntimeError, match="boom"):
        with lorakit.per_sample(pipe, ["c", None]):
            raise RuntimeError("boom")
    assert _state(pipe) == before
    with pytest.raises(errors.BatchLayoutError):
        with lorakit.per_sample(pipe, ["c", None, "d"]):
            denoise(pipe, "sd1", denoiser_inputs("sd1", 4))  # 4 rows for 3 entries
    assert _state(pipe) == before


def test_fused_adapters_are_every_samples_base() -> None:
    pipe = pipeline("sd1")
    pipe.set_adapters(["a"])
    pipe.fuse_lora(adapter_names=["a"])
    with pytest.raises(errors.FusedStateError, match="fused"):
        with lorakit.per_sample(pipe, ["a", None]):
            pass
    inputs = denoiser_inputs("sd1", 2)
    with lorakit.per_sample(pipe, ["b", None]):
        batch = denoise(pipe, "sd1", inputs)
    # row 1 (None) is the fused base: a is in it
    pipe.set_adapters([])
    base_with_a = denoise(pipe, "sd1", _rows(inputs, 1))
    assert rel(batch[1:2], base_with_a) <= TOL


def test_misuse_is_a_typed_error() -> None:
    pipe = pipeline("sd1")
    with pytest.raises(errors.PerSampleError):
        with lorakit.per_sample(pipe, []):
            pass
    with pytest.raises(errors.AdapterNotFoundError):
        with lorakit.per_sample(pipe, ["nope"]):
            pass
    with pytest.raises(errors.AdapterWeightError):
        with lorakit.per_sample(pipe, [{"a": float("nan")}]):
            pass
    with lorakit.per_sample(pipe, ["a"]):
        with pytest.raises(errors.PerSampleError, match="already running"):
            with lorakit.per_sample(pipe, ["b"]):
                pass
    with pytest.raises(errors.PerSampleError, match="prompt"):
        with lorakit.per_sample(pipe, ["a", "b"]):
            pipe(prompt=["x", "y", "z"], num_inference_steps=1, output_type="latent", height=32, width=32)
    with pytest.raises(errors.UnsupportedPipelineError):
        with lorakit.per_sample(tiny_pipeline("sd1"), ["a"]):
            pass


# ------------------------------------------------------------------------------------------------ cache
def _sources(family: str = "sd1", n: int = 6) -> dict[str, dict[str, Tensor]]:
    pipe = _base(family)
    return {f"u{i}": _lora_dict(pipe, family, seed=100 + i) for i in range(n)}


def test_cache_loads_on_miss_and_evicts_the_least_recently_used() -> None:
    pipe = lorakit.attach(copy.deepcopy(_base("sd1")))
    pipe.load_lora_weights(_lora_dict(pipe, "sd1", seed=1), adapter_name="own")
    active = pipe.get_active_adapters()
    src = _sources()
    cache_ = lorakit.AdapterCache(pipe, max_adapters=3)
    cache_.ensure({k: src[k] for k in ("u0", "u1", "u2")})
    assert (cache_.stats.misses, cache_.stats.hits, cache_.stats.evictions) == (3, 0, 0)
    assert pipe.get_active_adapters() == active  # the cache never changes what is active
    cache_.ensure(["u0"])  # u0 is now the most recent
    cache_.ensure({"u3": src["u3"]})  # evicts u1, the least recently used
    loaded = set(pipe._lorakit_set().loaded())
    assert {"u0", "u2", "u3", "own"} <= loaded and "u1" not in loaded
    assert (cache_.stats.misses, cache_.stats.hits, cache_.stats.evictions) == (4, 1, 1)
    cache_.ensure(["u1"])  # registered before: reloads from its source
    assert "u1" in pipe._lorakit_set().loaded() and cache_.stats.misses == 5
    assert "own" in pipe._lorakit_set().loaded()  # adapters the cache did not load are never evicted
    with pytest.raises(errors.AdapterNotFoundError):
        cache_.ensure(["never-registered"])


def test_cache_never_evicts_what_a_running_context_uses() -> None:
    pipe = lorakit.attach(copy.deepcopy(_base("sd1")))
    src = _sources()
    cache_ = lorakit.AdapterCache(pipe, max_adapters=2)
    cache_.ensure({"u0": src["u0"], "u1": src["u1"]})
    with lorakit.per_sample(pipe, ["u0", "u1"]):
        cache_.ensure({"u2": src["u2"]})  # over the limit, but u0 and u1 are pinned
        assert {"u0", "u1", "u2"} <= set(pipe._lorakit_set().loaded())
    cache_.ensure(["u2"])  # now the limit holds again: the least recently used goes
    assert len(cache_) == 2 and "u0" not in pipe._lorakit_set().loaded()


def test_cache_byte_limit_and_threads() -> None:
    pipe = lorakit.attach(copy.deepcopy(_base("sd1")))
    src = _sources(n=8)
    cache_ = lorakit.AdapterCache(pipe)
    cache_.ensure({"u0": src["u0"]})
    one = cache_.nbytes
    cache_.max_bytes = 3 * one
    errors_seen: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(6):
                name = f"u{(k + i) % 8}"
                cache_.ensure({name: src[name]})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors_seen.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors_seen == []
    assert cache_.nbytes <= 3 * one and len(cache_) <= 3
    loaded = set(pipe._lorakit_set().loaded())
    assert loaded == set(cache_._lru)  # what the cache counts is what is loaded
    s = cache_.stats
    assert s.hits + s.misses == 1 + 18 and s.evictions == s.misses - len(cache_)
