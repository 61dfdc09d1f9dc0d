"""One measurement group for one tool, run in a fresh process by ``run.py`` (or in-process by the smoke test).

Usage: ``python benchmarks/worker.py '<json job>'``; the job names the group, the tool, the model and LoRA files,
and where to write the JSON result. Groups:

* ``ops``: per LoRA file: load from file, load from an in-memory dict, ``fuse_lora``, ``unfuse_lora`` (+ restored
  weights vs. the saved originals), ``unload_lora_weights``.
* ``switch``: ``set_adapters`` with 1 and 3 active out of 3 and out of 20 resident adapters; also the switch latency
  (``set_adapters`` + the next small UNet forward, which includes work an implementation defers to the forward).
* ``forward``: UNet forward time fused, and with 0/1/3 unfused adapters (lorakit: "lowrank" and "merged"); fused vs
  unfused output agreement (UNet and text encoder); outputs saved for the cross-tool comparison.
* ``rss``: peak extra RSS during one cold load from file (``/proc/self/status`` VmHWM reset with ``clear_refs``).
* ``cycles``: RSS growth over N load/unload cycles.
* ``fuse``: the first ``fuse_lora`` of a fresh process (the job's thread count and, for lorakit, fuse strategy),
  its peak extra RSS against the bytes of the fused modules' weights, the first ``unfuse_lora`` (bit-exact check),
  then the serving loop: fuse A, unfuse, fuse B, unfuse, … (each cycle timed, the originals checked bit for bit
  after every unfuse).
* ``persample``: one UNet step for a batch of prompts with a different rank-32 LoRA each (lorakit.per_sample),
  against the same batch with one LoRA and against one-prompt runs with ``set_adapters`` between them.
* ``cache``: lorakit.AdapterCache: load-on-miss time and RSS over ensure/evict cycles.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import models  # noqa: E402
import tools  # noqa: E402
from lorafiles import variant  # noqa: E402

# ---------------------------------------------------------------------------------------------------- helpers


def proc_status() -> dict[str, int]:
    """VmRSS / VmHWM / RssAnon / RssFile of this process, in bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) * 1024
    return out


#: the process's peak RSS before the last VmHWM reset (a reset forgets it; the lifetime peak is this or VmHWM)
_EARLIER_PEAK = 0


def lifetime_peak() -> int:
    """This process's peak RSS over its whole life, across VmHWM resets."""
    return max(_EARLIER_PEAK, proc_status().get("VmHWM", 0))


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where not allowed."""
    global _EARLIER_PEAK
    _EARLIER_PEAK = lifetime_peak()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


#: set to 1 to run a ``--device cuda`` job on the CPU (the device check faked): every CUDA-only branch of the harness
#: (synchronised timing, device-memory peaks, fp16 weights) runs in CI, so a GPU run is one command
FAKE_CUDA_ENV = "LORAKIT_BENCH_FAKE_CUDA"


class Timer:
    """Times a call on the job's device, and measures the device's memory (CUDA's allocator there; on the CPU the
    process RSS, which the groups read themselves)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.fake = self.cuda and os.environ.get(FAKE_CUDA_ENV) == "1"
        if self.cuda and not self.fake and not torch.cuda.is_available():
            raise SystemExit(f"--device {device}: torch sees no CUDA device (is this the CPU build of torch?)")
        #: where the models are put (the CPU when the device is faked)
        self.placement = "cpu" if self.fake else device
        self.syncs = 0

    def sync(self) -> None:
        if self.cuda:
            self.syncs += 1
            if not self.fake:
                torch.cuda.synchronize()

    def memory_mark(self) -> int:
        """Allocated device bytes now, and the peak counter restarted from here (0 off CUDA)."""
        if not self.cuda:
            return 0
        if self.fake:
            reset_peak()
            return proc_status()["VmRSS"]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.memory_allocated())

    def memory_peak(self) -> int:
        """Peak allocated device bytes since the last ``memory_mark``."""
        if not self.cuda:
            return 0
        if self.fake:
            return proc_status()["VmHWM"]
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())

    def __call__(self, fn: Callable[[], Any]) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0


def read_dict(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


class Ctx:
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.size = models.SIZES[job["size"]]
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[job.get("dtype", "fp32")]
        self.device = job.get("device", "cpu")
        self.timer = Timer(self.device)
        self.model_dir = job["model_dir"]
        self.files: dict[str, str] = job["files"]
        pipe = models.load_pipeline(self.size, self.model_dir, self.timer.placement, self.dtype)
        tool_cls = {"peft": tools.PeftTool, "lorakit": tools.LorakitTool}[job["tool"]]
        tool_cls.preimport()
        self.tool = tool_cls(pipe)
        self.pipe = self.tool.pipe

    def unet_forward(self, latent: int | None = None) -> torch.Tensor:
        kw = models.unet_inputs(self.size, self.pipe)
        if latent is not None:
            kw["sample"] = kw["sample"][..., :latent, :latent].contiguous()
        with torch.no_grad():
            return self.pipe.unet(**kw).sample

    def te_forward(self) -> torch.Tensor:
        ids = models.text_inputs(self.size).to(self.pipe.text_encoder.device)
        with torch.no_grad():
            return self.pipe.text_encoder(ids)[0]


def diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a, b = a.float().cpu(), b.float().cpu()
    d = (a - b).abs()
    return {"max_abs": float(d.max()), "rel": float(d.max() / b.abs().max().clamp_min(1e-12))}


# ---------------------------------------------------------------------------------------------------- groups


def group_ops(ctx: Ctx) -> dict[str, Any]:
    t, tool = ctx.timer, ctx.tool
    out: dict[str, Any] = {}
    inner = ctx.job.get("inner", 1)
    # warm-up: first-call imports and allocator state, not measured
    tool.load(ctx.files[ctx.job["file_order"][0]], "warmup")
    tool.unload()
    for fname in ctx.job["file_order"]:
        path = ctx.files[fname]
        sd = read_dict(path)
        r: dict[str, Any] = {k: float("inf") for k in ("load_file", "load_dict", "fuse", "unfuse", "unload")}
        for i in range(inner):
            gc.collect()
            r["load_file"] = min(r["load_file"], t(lambda path=path: tool.load(path, "a")))
            r["fuse"] = min(r["fuse"], t(lambda: tool.fuse(["a"])))
            if i == 0:
                probe = "attn.to_q" if ctx.size.family == "flux" else "attn1.to_q"
                changed = not tools.restored_check(tool, ctx.model_dir, only=probe)["identical"]
                r["fuse_changed_weights"] = changed
            r["unfuse"] = min(r["unfuse"], t(tool.unfuse))
            if i == 0:
                r["restored"] = tools.restored_check(tool, ctx.model_dir)
            r["unload"] = min(r["unload"], t(tool.unload))
            gc.collect()
            r["load_dict"] = min(r["load_dict"], t(lambda sd=sd: tool.load(dict(sd), "b")))
            tool.unload()
        out[fname] = r
    return out


def group_switch(ctx: Ctx) -> dict[str, Any]:
    t, tool = ctx.timer, ctx.tool
    inner = ctx.job.get("inner", 5)
    resident = ctx.job.get("resident", 20)
    path = ctx.files["kohya"]
    sd = read_dict(path)
    tool.load(path, "a0")
    for i in (1, 2):
        tool.load(variant(sd, i), f"a{i}")
    small = max(8, ctx.size.latent // 8)

    def measure(n_res: int) -> dict[str, float]:
        res: dict[str, float] = {}
        cases = {"1": (["a0"], [1.0]), "3": (["a0", "a1", "a2"], [0.5, 0.3, 0.2])}
        ctx.unet_forward(small)

        def keep(key: str, value: float) -> None:
            res[key] = min(res.get(key, float("inf")), value)

        for _ in range(inner):
            for k, (names, weights) in cases.items():
                # each timed call is a real switch (the other case was active before)
                keep(f"set_{k}_of_{n_res}", t(lambda names=names, weights=weights: tool.set_adapters(names, weights)))
        for k, (names, weights) in cases.items():
            tool.set_adapters(*cases["3" if k == "1" else "1"])
            ctx.unet_forward(small)
            dt = t(lambda names=names, weights=weights: tool.set_adapters(names, weights))
            # the first forward after the switch carries whatever work was deferred to it
            keep(f"switch_{k}_of_{n_res}", dt + t(lambda: ctx.unet_forward(small)))
            keep(f"fwd_{k}_of_{n_res}", t(lambda: ctx.unet_forward(small)))
        return res

    out = measure(3)
    loads = []
    for i in range(3, resident):
        v = variant(sd, i)
        loads.append(t(lambda v=v, i=i: tool.load(v, f"a{i}")))
    out["load_dict_4th"] = loads[0] if loads else None
    out["load_dict_last"] = loads[-1] if loads else None
    out.update(measure(resident))
    out["resident"] = resident
    out["small_latent"] = small
    return out


def group_forward(ctx: Ctx) -> dict[str, Any]:
    t, tool = ctx.timer, ctx.tool
    path = ctx.files["kohya"]
    sd = read_dict(path)
    small = min(16, ctx.size.latent)  # agreement checks (cheap); timings use the full benchmark latents
    passes = ctx.job.get("passes", 2)
    outputs: dict[str, torch.Tensor] = {}
    times: dict[str, float] = {}

    def check(label: str) -> None:
        # also builds whatever an implementation caches after a state change, outside the timing
        outputs[label] = ctx.unet_forward(small)
        outputs[label + ":te"] = ctx.te_forward()

    check("no_lora")
    tool.load(path, "a0")
    for i in (1, 2):
        tool.load(variant(sd, i), f"a{i}")
    one = (["a0"], [1.0])
    three = (["a0", "a1", "a2"], [0.5, 0.3, 0.2])
    strategies = ["lowrank", "merged"] if ctx.job["tool"] == "lorakit" else ["lowrank"]

    def enter(label: str) -> None:
        if label == "unfused0":
            tool.disable()
            return
        tool.enable()
        if label.startswith("fused"):
            tool.set_strategy("lowrank")
            tool.set_adapters(*(one if label == "fused1" else three))
            tool.fuse((one if label == "fused1" else three)[0])
            return
        n, strategy = label[len("unfused") :].split("_")
        tool.set_strategy(strategy)
        tool.set_adapters(*(one if n == "1" else three))

    def leave(label: str) -> None:
        if label.startswith("fused"):
            tool.unfuse()
        tool.enable()

    configs = ["unfused0"] + [f"unfused{n}_{s}" for s in strategies for n in ("1", "3")] + ["fused1"]
    # configurations interleaved within the process, each timed once per pass; minimum over passes
    for p in range(passes):
        for label in configs:
            enter(label)
            if p == 0:
                check(label)
            else:
                ctx.unet_forward(8)
            dt = t(lambda: ctx.unet_forward())
            times[label] = min(times.get(label, float("inf")), dt)
            leave(label)
    enter("fused3")
    check("fused3")
    leave("fused3")
    agree: dict[str, Any] = {}
    for strategy in strategies:
        for n in ("1", "3"):
            for part in ("", ":te"):
                agree[f"fused{n}_vs_unfused{n}_{strategy}{part or ':unet'}"] = diff(
                    outputs[f"unfused{n}_{strategy}{part}"], outputs[f"fused{n}{part}"]
                )
    agree["disabled_vs_no_lora:unet"] = diff(outputs["unfused0"], outputs["no_lora"])
    agree["lora_effect:unet"] = diff(outputs["fused1"], outputs["no_lora"])
    agree["lora_effect:te"] = diff(outputs["fused1:te"], outputs["no_lora:te"])
    save = ctx.job.get("save_outputs")
    if save:
        torch.save({k: v.float().cpu() for k, v in outputs.items()}, save)
    return {"times": times, "agreement": agree, "latent": ctx.size.latent, "agree_latent": small, "passes": passes}


def group_rss(ctx: Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fname = ctx.job["file"]
    path = ctx.files[fname]
    gc.collect()
    ok = reset_peak()
    before = proc_status()
    ctx.tool.load(path, "a")
    after = proc_status()
    gc.collect()
    settled = proc_status()
    out[fname] = {
        "reset_ok": ok,
        "file_bytes": os.path.getsize(path),
        "peak_extra": after["VmHWM"] - before["VmRSS"],
        "retained": settled["VmRSS"] - before["VmRSS"],
        "anon_extra": after["RssAnon"] - before["RssAnon"],
        "file_backed_extra": after["RssFile"] - before["RssFile"],
    }
    return out


def group_cycles(ctx: Ctx) -> dict[str, Any]:
    t, tool = ctx.timer, ctx.tool
    path = ctx.files["kohya"]
    n = ctx.job.get("cycles", 100)
    tool.load(path, "a")
    tool.unload()
    gc.collect()
    start = proc_status()["VmRSS"]
    t0 = time.perf_counter()
    samples = []
    for i in range(n):
        tool.load(path, "a")
        tool.unload()
        if (i + 1) % max(1, n // 4) == 0:
            gc.collect()
            samples.append(proc_status()["VmRSS"] - start)
    elapsed = time.perf_counter() - t0
    gc.collect()
    end = proc_status()["VmRSS"]
    del t
    return {
        "cycles": n,
        "growth": end - start,
        "samples": samples,
        "per_cycle_s": elapsed / n,
        "file_bytes": os.path.getsize(path),
    }


def _checksums(ctx: Ctx) -> dict[str, tuple[int, int]]:
    """Per Linear / Conv weight: (sum of its bit patterns, bytes): which weights a fuse changed, with no copy."""
    out: dict[str, tuple[int, int]] = {}
    for comp, model in ctx.tool.components().items():
        for path, m in model.named_modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                w = m.weight.detach()
                bits = w.reshape(-1).view(torch.int32 if w.element_size() == 4 else torch.int16)
                out[f"{comp}.{path}"] = (int(bits.sum(dtype=torch.int64)), w.numel() * w.element_size())
    return out


def group_fuse(ctx: Ctx) -> dict[str, Any]:
    t, tool = ctx.timer, ctx.tool
    strategy = ctx.job.get("strategy")
    path = ctx.files["kohya"]
    sd = read_dict(path)
    tool.load(path, "a")
    tool.load(variant(sd, 1), "b")
    tool.set_adapters(["a"])
    before_sums = _checksums(ctx)
    gc.collect()
    device_before = t.memory_mark()
    ok = reset_peak()
    before = proc_status()
    first_fuse = t(lambda: tool.fuse(["a"], strategy))
    peak = proc_status()["VmHWM"] - before["VmRSS"]
    if t.cuda:  # the fused weights live in device memory: its allocator's peak is the figure (RSS kept beside it)
        rss_peak, peak = peak, t.memory_peak() - device_before
    after_sums = _checksums(ctx)
    changed = [k for k in before_sums if before_sums[k][0] != after_sums[k][0]]
    fused_bytes = sum(before_sums[k][1] for k in changed)
    first_unfuse = t(tool.unfuse)
    restored = tools.restored_check(tool, ctx.model_dir)
    # the serving loop: fuse one adapter, unfuse, fuse the other, ...; every cycle checked against the saved originals
    cycles: list[float] = []
    exact = bool(restored["identical"])
    for i in range(ctx.job.get("switches", 6)):
        name = "ab"[i % 2]
        tool.set_adapters([name])
        cycles.append(t(lambda name=name: (tool.fuse([name], strategy), tool.unfuse())))
        exact = exact and _checksums(ctx) == before_sums  # every weight's bits back (bit-pattern sums)
    exact = exact and bool(tools.restored_check(tool, ctx.model_dir)["identical"])  # and against the saved files
    return {
        "first_fuse": first_fuse,
        "first_unfuse": first_unfuse,
        "restored": restored,
        "peak_extra": peak,
        "peak_memory": "device" if t.cuda else "rss",
        "peak_rss_extra": rss_peak if t.cuda else peak,
        "peak_reset_ok": ok,
        "fused_bytes": fused_bytes,
        "fused_modules": len(changed),
        "cycle_best": min(cycles),
        "cycle_median": sorted(cycles)[len(cycles) // 2],
        "cycles": cycles,
        "cycle_exact": exact,
        "strategy": strategy or "default",
    }


def group_persample(ctx: Ctx) -> dict[str, Any]:
    t, tool = ctx.timer, ctx.tool
    n = ctx.job.get("batch", 8)
    path = ctx.files["kohya"]
    sd = read_dict(path)
    names = [f"u{i}" for i in range(n)]
    for i, name in enumerate(names):
        tool.load(variant(sd, i), name)
    latent = ctx.job.get("latent") or max(8, ctx.size.latent // 2)
    kw = models.unet_inputs(ctx.size, ctx.pipe)
    kw["sample"] = kw["sample"][..., :latent, :latent].contiguous()
    batch = {k: (v.expand(n, *v.shape[1:]).contiguous() if isinstance(v, torch.Tensor) and v.dim() > 1 else v) for k, v in kw.items()}
    passes = ctx.job.get("passes", 2)
    out: dict[str, float] = {}

    def keep(key: str, value: float) -> None:
        out[key] = min(out.get(key, float("inf")), value)

    def fwd(inputs: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            return ctx.pipe.unet(**inputs).sample

    for _ in range(passes):
        tool.set_adapters([names[0]])
        fwd(batch)
        keep("one_lora_batch", t(lambda: fwd(batch)))

        def serial() -> None:
            for name in names:
                tool.set_adapters([name])
                fwd(kw)

        serial()
        keep("serial", t(serial))
        if ctx.job["tool"] == "lorakit":
            import lorakit

            with lorakit.per_sample(ctx.pipe, names):
                fwd(batch)
                keep("per_sample_batch", t(lambda: fwd(batch)))
    return {**out, "batch": n, "latent": latent, "rank": ctx.size.rank}


def group_cache(ctx: Ctx) -> dict[str, Any]:
    import lorakit

    path = ctx.files["kohya"]
    sd = read_dict(path)
    sources = {f"u{i}": variant(sd, i) for i in range(3)}
    cache = lorakit.AdapterCache(ctx.pipe, max_adapters=2)
    n = ctx.job.get("cycles", 1000)
    cache.ensure({"u0": sources["u0"], "u1": sources["u1"]})
    gc.collect()
    start = proc_status()["VmRSS"]
    samples = []
    for i in range(n):
        name = f"u{i % 3}"
        cache.ensure({name: sources[name]})
        if (i + 1) % max(1, n // 4) == 0:
            gc.collect()
            samples.append(proc_status()["VmRSS"] - start)
    return {
        "cycles": n,
        "growth": samples[-1] if samples else 0,
        "samples": samples,
        "load_on_miss_s": cache.stats.load_seconds / max(1, cache.stats.misses),
        "hits": cache.stats.hits,
        "misses": cache.stats.misses,
        "evictions": cache.stats.evictions,
        "file_bytes": os.path.getsize(path),
    }


GROUPS = {
    "ops": group_ops,
    "switch": group_switch,
    "forward": group_forward,
    "rss": group_rss,
    "cycles": group_cycles,
    "fuse": group_fuse,
    "persample": group_persample,
    "cache": group_cache,
}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    try:
        t0 = time.perf_counter()
        ctx = Ctx(job)
        model_rss = proc_status().get("VmRSS", 0)
        result = GROUPS[job["group"]](ctx)
        result["_rss_model"] = model_rss  # the process with the pipeline loaded, before any LoRA
        result["_rss_peak"] = lifetime_peak()
        result["_wall_s"] = time.perf_counter() - t0
        result["_threads"] = torch.get_num_threads()
        result["_syncs"] = ctx.timer.syncs
        return result
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    job = json.loads(sys.argv[1])
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # noqa: BLE001 - logging knobs only
        pass
    result = run_job(job)
    with open(job["result"], "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
