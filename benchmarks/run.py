"""lorakit vs diffusers + PEFT: the same LoRA workload through both, each measurement group in a fresh process.

Usage::

    .venv/bin/python benchmarks/run.py            # full run (SD1.5 size, fp32 CPU): writes docs/benchmarks.md
    .venv/bin/python benchmarks/run.py --quick    # half-width models, 1 repeat: development (writes into the workdir)
    .venv/bin/python benchmarks/run.py --sdxl     # SDXL-size models
    .venv/bin/python benchmarks/run.py --device cuda --dtype fp16

What happens: models with seeded random weights are built from configs once and saved (``save_pretrained``) into a
work folder, the LoRA files are generated there (see ``lorafiles.py``), then every measurement group (``worker.py``:
ops, switch, forward, rss, cycles) runs once per tool per round in a fresh subprocess; the tools' order alternates
between rounds (interleaved), and each figure is the minimum over rounds (and over inner repeats). Ratios are
reference time ÷ lorakit time (> 1: lorakit is faster). The report is printed and written as Markdown.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

TOOLS = ("peft", "lorakit")
LABEL = {"peft": "diffusers + PEFT", "lorakit": "lorakit"}
FILE_LABEL = {
    "kohya": "kohya rank-32 (UNet attn/FF/proj + TE linears)",
    "locon": "kohya rank-32 + 3×3 conv LoCon",
    "diffusers": "diffusers-format rank-64, attention only",
}
MB = 1e6
#: groups run in the first round only (unless --repeat-all): inner repeats, or figures that are not timings
ONCE = ("switch", "forward", "rss", "cycles", "persample", "cache")
#: lorakit's fuse strategies measured by the fuse group (the first is the default)
FUSE_STRATEGIES = ("copy", "inplace")  # the default first


# ------------------------------------------------------------------------------------------------------ setup


def prepare(size_name: str, workdir: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Build + save the models of ``size_name`` and write its LoRA files under ``workdir`` (reused when present)."""
    import lorafiles
    import models

    size = models.SIZES[size_name]
    folder = os.path.join(workdir, size_name)
    stamp = os.path.join(folder, "READY")
    names = ("diffusers",) if size.family == "flux" else lorafiles.FILES
    files = {n: os.path.join(folder, "lora", f"{size_name}_{n}.safetensors") for n in names}
    if not os.path.exists(stamp):
        t0 = time.perf_counter()
        os.makedirs(folder, exist_ok=True)
        models.save_models(size, folder)
        files = lorafiles.write_files(size, os.path.join(folder, "lora"))
        with open(stamp, "w") as fh:
            fh.write("ok\n")
        log(f"built {size_name} models and LoRA files in {time.perf_counter() - t0:.0f} s")
    return {"model_dir": folder, "files": files, "size": size_name}


def run_job(job: dict[str, Any], in_process: bool, timeout: float) -> dict[str, Any]:
    if in_process:
        import gc

        import worker

        # the host process (the smoke test's pytest) may hold many objects: keep them out of the groups' collections
        gc.freeze()
        try:
            return worker.run_job(job)
        finally:
            gc.unfreeze()
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "worker.py"), json.dumps(job)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        return {"_error": f"exit {proc.returncode}: {tail}"}
    with open(job["result"]) as fh:
        return json.load(fh)


# ------------------------------------------------------------------------------------------------------ aggregation


def _min(values: list[float]) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float))]
    return min(vals) if vals else None


def _ops(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per LoRA file: the minimum of each timing over the runs, the worst restore."""
    out: dict[str, Any] = {}
    for r in runs:
        for fname, m in r.items():
            if fname.startswith("_"):
                continue
            d = out.setdefault(fname, {"restored": {"max_abs": 0.0, "identical": True}})
            for k in ("load_file", "load_dict", "fuse", "unfuse", "unload"):
                d[k] = _min([d.get(k), m[k]])
            d["restored"]["max_abs"] = max(d["restored"]["max_abs"], m["restored"]["max_abs"])
            d["restored"]["identical"] = d["restored"]["identical"] and m["restored"]["identical"]
            d["fuse_changed_weights"] = d.get("fuse_changed_weights", True) and m["fuse_changed_weights"]
    return out


def aggregate(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Minimum over rounds of every timing; worst case of every error/memory figure."""
    agg: dict[str, Any] = {}
    for tool in TOOLS:
        a: dict[str, Any] = {"errors": []}
        for group, per_tool in results.items():
            for r in per_tool.get(tool, []):
                if "_error" in r:
                    a["errors"].append(f"{group}: {r['_error']}")
        a["memory"] = {}  # per group: the model alone, and the process's lifetime peak (worst round)
        for group, per_tool in results.items():
            for r in per_tool.get(tool, []):
                if "_rss_peak" in r:
                    m = a["memory"].setdefault(group, {"model": r["_rss_model"], "peak": 0})
                    m["peak"] = max(m["peak"], r["_rss_peak"])
                    m["model"] = min(m["model"], r["_rss_model"])
        a["ops"] = _ops([r for r in results.get("ops", {}).get(tool, []) if "_error" not in r])
        a["flux"] = _ops([r for r in results.get("flux", {}).get(tool, []) if "_error" not in r])
        sw = [r for r in results.get("switch", {}).get(tool, []) if "_error" not in r]
        a["switch"] = {}
        for r in sw:
            for k, v in r.items():
                if k.startswith(("set_", "switch_", "fwd_", "load_dict_")):
                    a["switch"][k] = _min([a["switch"].get(k), v])
                elif not k.startswith("_"):
                    a["switch"][k] = v
        fw = [r for r in results.get("forward", {}).get(tool, []) if "_error" not in r]
        a["forward"] = {"times": {}, "agreement": {}}
        for r in fw:
            for k, v in r["times"].items():
                a["forward"]["times"][k] = _min([a["forward"]["times"].get(k), v])
            for k, v in r["agreement"].items():
                cur = a["forward"]["agreement"].get(k, {"max_abs": 0.0, "rel": 0.0})
                a["forward"]["agreement"][k] = {x: max(cur[x], v[x]) for x in ("max_abs", "rel")}
            a["forward"]["latent"] = r["latent"]
            a["forward"]["agree_latent"] = r.get("agree_latent")
        a["rss"] = {}
        for r in results.get("rss", {}).get(tool, []):
            if "_error" in r:
                continue
            for fname, m in r.items():
                if fname.startswith("_"):
                    continue
                cur = a["rss"].get(fname)
                if cur is None or m["peak_extra"] > cur["peak_extra"]:
                    a["rss"][fname] = m
        cyc = [r for r in results.get("cycles", {}).get(tool, []) if "_error" not in r]
        a["cycles"] = max(cyc, key=lambda r: r["growth"]) if cyc else None
        a["fuse"] = {}
        for r in results.get("fuse", {}).get(tool, []):
            if "_error" in r:
                continue
            key = f"{r['_threads']}:{r['strategy']}"
            d = a["fuse"].setdefault(key, {"exact": True, "peak_ratio": 0.0, "runs": 0})
            for k in ("first_fuse", "first_unfuse", "cycle_best"):
                d[k] = _min([d.get(k), r[k]])
            d.setdefault("first_fuse_all", []).append(r["first_fuse"])
            d["exact"] = d["exact"] and bool(r["restored"]["identical"]) and bool(r["cycle_exact"])
            if r["fused_bytes"]:
                d["peak_ratio"] = max(d["peak_ratio"], r["peak_extra"] / r["fused_bytes"])
            d["fused_bytes"] = r["fused_bytes"]
            d["peak_memory"] = r.get("peak_memory", "rss")
            d["threads"] = r["_threads"]
            d["runs"] += 1
        ps = [r for r in results.get("persample", {}).get(tool, []) if "_error" not in r]
        a["persample"] = ps[0] if ps else None
        ca = [r for r in results.get("cache", {}).get(tool, []) if "_error" not in r]
        a["cache"] = ca[0] if ca else None
        agg[tool] = a
    return agg


def cross_tool(paths: dict[str, str]) -> dict[str, dict[str, float]]:
    """Max |Δ| between the two tools' saved forward outputs (same inputs, same files)."""
    import torch

    if not all(os.path.exists(p) for p in paths.values()):
        return {}
    ref = torch.load(paths["peft"])
    lk = torch.load(paths["lorakit"])
    out = {}
    for k in ("no_lora", "fused1", "fused3", "unfused1_lowrank", "unfused3_lowrank", "no_lora:te", "fused1:te", "unfused1_lowrank:te"):
        if k in ref and k in lk:
            d = (ref[k] - lk[k]).abs()
            out[k] = {"max_abs": float(d.max()), "rel": float(d.max() / ref[k].abs().max().clamp_min(1e-12))}
    return out


# ------------------------------------------------------------------------------------------------------ report


def _fmt_t(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v < 1e-4:
        return f"{v * 1e6:.0f} µs"
    if v < 0.01:
        return f"{v * 1e3:.2f} ms"
    if v < 1:
        return f"{v * 1e3:.0f} ms"
    return f"{v:.2f} s"


def _fmt_b(n: float) -> str:
    if abs(n) >= 1024 ** 3:
        return f"{n / 1024 ** 3:.2f} GiB"
    if abs(n) >= 10 * MB:
        return f"{n / MB:.0f} MB"
    if abs(n) >= MB:
        return f"{n / MB:.1f} MB"
    return f"{n / 1e3:.0f} kB"


def _ratio(ref: float | None, lk: float | None) -> float | None:
    if ref is None or lk is None or lk <= 0:
        return None
    return ref / lk


def _fmt_r(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.1f}×" if r >= 10 else f"{r:.2f}×"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**yes**" if ok else "**no**")


def _fuse_rows(ref: dict[str, Any], lk: dict[str, Any], row: Callable[..., None]) -> None:
    """The first fuse in a fresh process and the serving loop, per thread count; lorakit per fuse strategy."""
    rf, lf = ref.get("fuse", {}), lk.get("fuse", {})
    threads = sorted({k.split(":")[0] for k in [*rf, *lf]}, key=lambda x: -int(x))
    for th in threads:
        r = next((v for k, v in rf.items() if k.startswith(th + ":")), None)
        tlabel = f"{th} thread{'s' if th != '1' else ''}"
        for strategy in FUSE_STRATEGIES:
            lv = lf.get(f"{th}:{strategy}") or (lf.get(f"{th}:default") if strategy == FUSE_STRATEGIES[0] else None)
            if r is None and lv is None:
                continue
            default = strategy == FUSE_STRATEGIES[0]
            label = f"{tlabel}, lorakit fuse_strategy={strategy!r}" + (" (default)" if default else "")
            rr, ll = (r or {}), (lv or {})
            ratio = _ratio(rr.get("first_fuse"), ll.get("first_fuse"))
            row(f"first fuse_lora in a fresh process — kohya rank 32, {label}", rr.get("first_fuse"), ll.get("first_fuse"),
                ratio, "≥ 1× (stretch 2×)" if default else "", None if ratio is None or not default else ratio >= 1.0)
            serving = default  # every target judges the default; the other strategy is shown beside it
            ratio = _ratio(rr.get("first_unfuse"), ll.get("first_unfuse"))
            row(f"first unfuse_lora after it — {label}", rr.get("first_unfuse"), ll.get("first_unfuse"), ratio,
                "≥ 5×" if serving else "", None if ratio is None or not serving else ratio >= 5.0)
            ratio = _ratio(rr.get("cycle_best"), ll.get("cycle_best"))
            exact = ll.get("exact")
            row(f"serving loop: fuse A + unfuse, fuse B + unfuse, … (best cycle) — {label}", rr.get("cycle_best"),
                ll.get("cycle_best"), ratio, "≥ 2×, bit-exact every cycle" if serving else "bit-exact every cycle",
                None if ratio is None or exact is None else (ratio >= 2.0 or not serving) and bool(exact))
            pr = ll.get("peak_ratio")
            memory = "device memory" if (ll or rr).get("peak_memory") == "device" else "RSS"
            row(f"peak extra {memory} during the first fuse ÷ fused weights' bytes — {label}",
                "n/a" if r is None else f"{rr['peak_ratio']:.2f}", "n/a" if pr is None else f"{pr:.2f}",
                None, "≤ 1.1", None if pr is None else pr <= 1.1)


def _serving_rows(ref: dict[str, Any], lk: dict[str, Any], row: Callable[..., None]) -> None:
    """Per-sample batches and the adapter cache (lorakit only; PEFT can only run the prompts one after another)."""
    lp, rp = lk.get("persample"), ref.get("persample")
    if lp:
        n, lat = lp["batch"], lp["latent"]
        mixed, one = lp.get("per_sample_batch"), lp.get("one_lora_batch")
        ratio = _ratio(one, mixed)
        row(f"UNet step, batch {n} with {n} different rank-{lp['rank']} LoRAs (per_sample) vs the batch with 1 LoRA, "
            f"{lat}×{lat}", "n/a (one adapter set per batch)", f"{_fmt_t(mixed)} vs {_fmt_t(one)}", ratio, "≥ 0.8×",
            None if ratio is None else ratio >= 0.8)
        row(f"{n} prompts: {n} one-prompt runs with set_adapters between them ÷ one per_sample batch", _fmt_t(rp and rp.get("serial")),
            f"{_fmt_t(lp.get('serial'))} ÷ {_fmt_t(mixed)}", _ratio(lp.get("serial"), mixed), "", None)
        if rp and rp.get("serial") is not None:
            row(f"{n} prompts: diffusers + PEFT one-prompt runs ÷ lorakit per_sample batch", _fmt_t(rp["serial"]), _fmt_t(mixed),
                _ratio(rp["serial"], mixed), "", None)
    lc = lk.get("cache")
    if lc:
        row(f"AdapterCache: load on miss (in-memory state dict, {_fmt_b(lc['file_bytes'])} file)", "n/a", lc["load_on_miss_s"],
            None, "", None)
        row(f"AdapterCache: RSS growth over {lc['cycles']} ensure/evict cycles ({lc['misses']} loads, {lc['evictions']} evictions)",
            "n/a", f"{lc['growth'] / MB:+.1f} MB", None, "flat (< 50 MB)", lc["growth"] < 50 * MB)


def build_report(agg: dict[str, Any], cross: dict[str, Any], meta: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    ref, lk = agg["peft"], agg["lorakit"]
    rows: list[list[str]] = []
    verdicts: list[dict[str, Any]] = []

    def row(name: str, r: Any, lv: Any, ratio: float | None, target: str, ok: bool | None, fmt=_fmt_t) -> None:
        rows.append([name, fmt(r) if not isinstance(r, str) else r, fmt(lv) if not isinstance(lv, str) else lv, _fmt_r(ratio) if ratio is not None else "", target, _met(ok) if target else ""])
        if target:
            verdicts.append({"figure": name, "target": target, "met": ok})

    for fname in ("kohya", "locon", "diffusers"):
        if fname not in lk["ops"] and fname not in ref["ops"]:
            continue
        r, lv = ref["ops"].get(fname, {}), lk["ops"].get(fname, {})
        label = f"{FILE_LABEL[fname]}, {_fmt_b(meta['file_sizes'].get(fname, 0))}"
        for op, target, need in (
            ("load_file", "≥ 3×", 3.0),
            ("load_dict", "≥ 3×", 3.0),
            ("fuse", "≥ 2×", 2.0),
            ("unfuse", "≥ 5×", 5.0),
            ("unload", "", None),
        ):
            ratio = _ratio(r.get(op), lv.get(op))
            name = {"load_file": "load from file", "load_dict": "load from in-memory dict", "fuse": "fuse_lora",
                    "unfuse": "unfuse_lora", "unload": "unload_lora_weights"}[op]
            row(f"{name} — {label}", r.get(op), lv.get(op), ratio, target, None if ratio is None or need is None else ratio >= need)
        rr, lr = r.get("restored"), lv.get("restored")
        row(
            f"unfuse: restored weights max abs diff vs originals — {fname}",
            "n/a" if rr is None else f"{rr['max_abs']:.3g}" + (" (bit-identical)" if rr["identical"] else ""),
            "n/a" if lr is None else f"{lr['max_abs']:.3g}" + (" (bit-identical)" if lr["identical"] else ""),
            None,
            "bit-identical",
            None if lr is None else bool(lr["identical"]),
        )
    for fname, r in ref.get("flux", {}).items() if ref.get("flux") else lk.get("flux", {}).items():
        lv = lk.get("flux", {}).get(fname, {})
        label = f"Flux.1 (19 double + 38 single blocks, 768 wide), {_fmt_b(meta.get('flux_file_size', 0))} diffusers-format rank 16"
        for op, target, need in (("load_file", "≥ 3×", 3.0), ("fuse", "≥ 1×", 1.0), ("unfuse", "", None)):
            ratio = _ratio(r.get(op), lv.get(op))
            name = {"load_file": "load from file", "fuse": "fuse_lora", "unfuse": "unfuse_lora"}[op]
            row(f"{name} — {label}", r.get(op), lv.get(op), ratio, target, None if ratio is None or need is None else ratio >= need)
        lr = lv.get("restored")
        row("unfuse: restored weights vs originals — Flux.1", "n/a" if not r.get("restored") else f"{r['restored']['max_abs']:.3g}",
            "n/a" if lr is None else f"{lr['max_abs']:.3g}" + (" (bit-identical)" if lr["identical"] else ""), None,
            "bit-identical", None if lr is None else bool(lr["identical"]))
    rs, ls = ref["switch"], lk["switch"]
    if ls or rs:
        res = ls.get("resident") or rs.get("resident")
        for n in ("1", "3"):
            for k in ("3", str(res)):
                key = f"set_{n}_of_{k}"
                ratio = _ratio(rs.get(key), ls.get(key))
                row(f"set_adapters: {n} active of {k} resident", rs.get(key), ls.get(key), ratio, "≥ 1×", None if ratio is None else ratio >= 1.0)
        for n in ("1", "3"):
            a, b = ls.get(f"set_{n}_of_3"), ls.get(f"set_{n}_of_{res}")
            ra, rb = rs.get(f"set_{n}_of_3"), rs.get(f"set_{n}_of_{res}")
            flat = None if a is None or b is None else b / a

            def fl(x: float | None, y: float | None) -> str:
                return "n/a" if x is None or y is None else f"{y / x:.2f} (+{_fmt_t(max(0.0, y - x))})"

            row(
                f"set_adapters flatness: time({n} of {res}) ÷ time({n} of 3)",
                fl(ra, rb),
                fl(a, b),
                None,
                "flat: ≤ 1.5× or < 1 ms added",
                None if flat is None else (flat <= 1.5 or b - a < 1e-3),
            )
        if ls.get("load_dict_last") is not None or rs.get("load_dict_last") is not None:
            row("load from dict with 3 adapters resident (4th adapter)", rs.get("load_dict_4th"), ls.get("load_dict_4th"),
                _ratio(rs.get("load_dict_4th"), ls.get("load_dict_4th")), "", None)
            row(f"load from dict with {res - 1} adapters resident ({res}th adapter)", rs.get("load_dict_last"),
                ls.get("load_dict_last"), _ratio(rs.get("load_dict_last"), ls.get("load_dict_last")), "", None)
        small = ls.get("small_latent") or rs.get("small_latent")
        for n in ("1", "3"):
            for k in ("3", str(res)):
                key = f"switch_{n}_of_{k}"

                def fs(m: dict[str, Any], key: str = key, n: str = n, k: str = k) -> str:
                    if m.get(key) is None:
                        return "n/a"
                    return f"{_fmt_t(m[key])} (forward alone {_fmt_t(m.get(f'fwd_{n}_of_{k}'))})"

                row(
                    f"switch: set_adapters + the next {small}×{small} UNet forward (lazy work included), {n} of {k}",
                    fs(rs), fs(ls), _ratio(rs.get(key), ls.get(key)), "", None,
                )
    rf, lf = ref["forward"]["times"], lk["forward"]["times"]
    if rf or lf:
        lat = lk["forward"].get("latent") or ref["forward"].get("latent")
        row(f"UNet forward {lat}×{lat} latents, batch 1, 1 adapter fused", rf.get("fused1"), lf.get("fused1"),
            _ratio(rf.get("fused1"), lf.get("fused1")), "", None)

        def over(t: dict[str, float], k: str) -> float | None:
            return None if t.get(k) is None or not t.get("fused1") else t[k] / t["fused1"]

        def fx(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}× fused"

        for label, k in (("0 unfused (adapters loaded, disabled)", "unfused0"), ("1 unfused, lowrank (default)", "unfused1_lowrank"),
                         ("3 unfused, lowrank (default)", "unfused3_lowrank"), ("1 unfused, merged strategy", "unfused1_merged"),
                         ("3 unfused, merged strategy", "unfused3_merged")):
            if k.endswith("merged"):
                r_time, r_over = rf.get("unfused" + k[7] + "_lowrank"), over(rf, "unfused" + k[7] + "_lowrank")
                rlabel = "n/a (PEFT: unfused only)" if r_over is None else f"{fx(r_over)} (PEFT unfused)"
            else:
                r_time, r_over, rlabel = rf.get(k), over(rf, k), fx(over(rf, k))
            row(f"UNet forward overhead, {label}", rlabel, fx(over(lf, k)), _ratio(r_time, lf.get(k)), "", None)
        for strategy in ("lowrank", "merged"):
            o1, o3 = over(lf, f"unfused1_{strategy}"), over(lf, f"unfused3_{strategy}")
            r1, r3 = over(rf, "unfused1_lowrank"), over(rf, "unfused3_lowrank")
            ok = None if o1 is None or o3 is None else o3 <= 1.1 * o1
            row(
                f"overhead(3 unfused) ÷ overhead(1 unfused), {strategy}",
                "n/a" if r1 is None or r3 is None else f"{r3 / r1:.3f}",
                "n/a" if o1 is None or o3 is None else f"{o3 / o1:.3f}",
                None,
                "≤ 1.1" if strategy == "lowrank" else "",
                ok if strategy == "lowrank" else None,
            )
    for fname in ("kohya", "locon", "diffusers"):
        r, lv = ref["rss"].get(fname), lk["rss"].get(fname)
        if r is None and lv is None:
            continue

        def fr(m: dict[str, Any] | None) -> str:
            if m is None:
                return "n/a"
            return f"{_fmt_b(m['peak_extra'])} = {m['peak_extra'] / m['file_bytes']:.2f}× file (retained {_fmt_b(m['retained'])})"

        ok = None if lv is None else lv["peak_extra"] <= 1.2 * lv["file_bytes"]
        fsize = _fmt_b((lv or r)["file_bytes"])
        row(f"peak extra RSS during load from file — {fname} ({fsize})", fr(r), fr(lv), None, "≤ 1.2× file", ok)
    rc, lc = ref["cycles"], lk["cycles"]
    if rc or lc:
        def fc(c: dict[str, Any] | None) -> str:
            if c is None:
                return "n/a"
            return f"{c['growth'] / MB:+.1f} MB ({_fmt_t(c['per_cycle_s'])}/cycle; file {_fmt_b(c['file_bytes'])})"

        n = (lc or rc)["cycles"]
        if rc is not None and lc is not None and rc["cycles"] != lc["cycles"]:
            rcycles = f"{rc['cycles']} cycles: "
        else:
            rcycles = ""
        row(f"RSS growth over {n} load/unload cycles (smaller model, see setup)", rcycles + fc(rc), fc(lc),
            _ratio(rc and rc["per_cycle_s"], lc and lc["per_cycle_s"]), "< 50 MB" + ("" if n >= 100 else f" (at 100; {n} run)"),
            None if lc is None else lc["growth"] < 50 * MB)
    _fuse_rows(ref, lk, row)
    _serving_rows(ref, lk, row)
    agreement_lines = []
    for tool in TOOLS:
        for k, v in sorted(agg[tool]["forward"]["agreement"].items()):
            agreement_lines.append(f"| {LABEL[tool]} | {k} | {v['max_abs']:.3g} | {v['rel']:.3g} |")
    for k, v in cross.items():
        agreement_lines.append(f"| lorakit vs diffusers + PEFT | {k} | {v['max_abs']:.3g} | {v['rel']:.3g} |")

    lines = [
        "# Benchmarks: lorakit vs diffusers + PEFT",
        "",
        f"Written by `benchmarks/run.py` on {meta['date']} ({meta['mode']}). Ratios are diffusers + PEFT time ÷ lorakit time "
        "(> 1: lorakit is faster). Each figure is the minimum over "
        f"{meta['repeats']} interleaved round(s) of fresh processes (one process per measurement group and tool; "
        "tools alternate which goes first). Rounds repeat the ops group (kohya and diffusers files; LoCon in round 1 "
        f"only); the other groups run once per tool and repeat inside the process: set_adapters {meta['inner']}× "
        f"(alternating 1/3 active), forward configurations interleaved over {meta['passes']} pass(es).",
        "",
        "| figure | diffusers + PEFT | lorakit | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    met = [v for v in verdicts if v["met"] is not None]
    lines += [
        "",
        f"Targets met: {sum(1 for v in met if v['met'])} of {len(met)} measured.",
        "",
        f"## Output agreement (UNet output at {meta.get('agree_latent') or '?'}² latents, text encoder last hidden state)",
        "",
        "| tool | comparison | max abs diff | max abs diff ÷ max abs reference |",
        "|---|---|---|---|",
        *agreement_lines,
        "",
        "`lora_effect` is the size of the LoRA's effect itself (1 adapter fused vs no LoRA), for scale; "
        "`disabled_vs_no_lora` checks that disabled adapters leave the base output.",
        "",
        "## Setup",
        "",
        f"- Models: {meta['size_describe']}; seeded random weights, {meta['dtype']} on {meta['device']}.",
        f"- RSS cycles model: {meta['cycle_model']}.",
        "- LoRA files (generated per run, seeded): "
        + "; ".join(f"`{k}` {FILE_LABEL[k]} ({_fmt_b(v)})" for k, v in meta["file_sizes"].items())
        + ". `set_adapters`/forward use the kohya file plus scaled copies of it as further adapters.",
        "- Load timings include reading the file (from the page cache) and converting keys; fuse/unfuse cover every "
        "component (UNet and text encoder). Peak extra RSS: VmHWM after the load minus VmRSS before it, with the peak "
        "reset (`/proc/self/clear_refs`) just before, in a fresh process that has imported its libraries but loaded "
        "nothing yet.",
        "- Forward overhead = time ÷ that tool's own fused-model time (1 adapter fused); \"merged\" is lorakit's opt-in "
        "strategy (`manager.set_unfused_strategy(\"merged\")`). Before each timed forward an untimed 8×8 forward "
        "builds whatever an implementation caches after a state change. The switch rows time `set_adapters` plus "
        "the next small forward, because lorakit defers per-module work (stacking the active adapters) to the next "
        "call while PEFT does its work inside `set_adapters`.",
        f"- Machine: {meta['machine']}. Load average at start {meta['load_start']}, at end {meta['load_end']} "
        "(the machine is shared; treat ratios near a target as noisy).",
        f"- Versions: {meta['versions']}.",
        "- Threads: every measurement process runs torch with 1 thread by default (`--threads`). The 2 cores are "
        "shared with other users; with 2 threads, OpenMP's barrier waits for a descheduled second thread, and a "
        "320×32 · 32×320 matmul measured 48 ms instead of 0.3 ms, which swamps every operation made of many small "
        "tensor ops (load, fuse, set_adapters) for both tools.",
        f"- Command: `{meta['command']}`; wall time {meta['wall_s'] / 60:.1f} min.",
    ]
    lines += _memory_lines(agg, meta)
    errors = [f"- {LABEL[t]}: {e}" for t in TOOLS for e in agg[t]["errors"]]
    if errors:
        lines += ["", "## Errors", "", *errors]
    return "\n".join(lines) + "\n", verdicts


#: the RAM a user of this machine class has; the memory section says which runs fit in it
FIT_BYTES = 24 * 1024 ** 3


def _memory_lines(agg: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Process RSS per group (the pipeline alone, and the lifetime peak) and whether the run fits in 24 GB."""
    groups = sorted({g for t in TOOLS for g in agg[t].get("memory", {})})
    if not groups:
        return []
    lines = [
        "",
        "## Memory: what fits in 24 GiB",
        "",
        f"Process RSS of each measurement process ({meta['size_describe']}, {meta['dtype']}): with the pipeline "
        "loaded and no LoRA, and the peak over the process's life (worst round). One process runs at a time.",
        "",
        "| group | diffusers + PEFT: pipeline / peak | lorakit: pipeline / peak | fits in 24 GiB (lorakit) |",
        "|---|---|---|---|",
    ]
    worst = {t: 0 for t in TOOLS}
    for g in groups:
        cells = []
        for t in TOOLS:
            m = agg[t].get("memory", {}).get(g)
            cells.append("n/a" if m is None else f"{_fmt_b(m['model'])} / {_fmt_b(m['peak'])}")
            if m is not None:
                worst[t] = max(worst[t], m["peak"])
        lk = agg["lorakit"].get("memory", {}).get(g)
        fits = "n/a" if lk is None else ("yes" if lk["peak"] <= FIT_BYTES else "**no**")
        lines.append(f"| {g} | {cells[0]} | {cells[1]} | {fits} |")
    lines += [
        "",
        f"Largest process: diffusers + PEFT {_fmt_b(worst['peft'])}, lorakit {_fmt_b(worst['lorakit'])}; "
        + ("both fit in 24 GiB." if max(worst.values()) <= FIT_BYTES else
           f"lorakit {'fits' if worst['lorakit'] <= FIT_BYTES else 'does not fit'} in 24 GiB, diffusers + PEFT "
           f"{'fits' if worst['peft'] <= FIT_BYTES else 'does not fit'}."),
    ]
    return lines


def machine_info() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as fh:
            mem = f"{int(fh.readline().split()[1]) / 1024 ** 2:.0f} GiB RAM"
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {mem}, {platform.system()} {platform.release()}"


def versions(threads: int | None) -> str:
    import importlib.metadata as md

    parts = [f"python {platform.python_version()}"]
    for pkg in ("torch", "diffusers", "transformers", "peft", "safetensors", "lorakit"):
        try:
            parts.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            parts.append(f"{pkg} ?")
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "src"], capture_output=True, text=True).stdout.strip()
        parts.append(f"lorakit commit {rev}{' + uncommitted changes in src/' if dirty else ''}")
    except OSError:
        pass
    import torch

    parts.append(f"torch threads per process {threads or torch.get_num_threads()}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------------------ main


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="half-width models, 32×32 latents, 1 round, 20 cycles")
    ap.add_argument("--sdxl", action="store_true", help="SDXL-size models")
    ap.add_argument("--toy", action="store_true", help="tiny models (smoke test)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds of the ops group (default 3; --quick/--toy 1)")
    ap.add_argument("--inner", type=int, default=None, help="inner repeats of set_adapters (default 5)")
    ap.add_argument("--passes", type=int, default=None, help="interleaved passes over forward configurations (default 2; --quick/--toy 1)")
    ap.add_argument("--cycles", type=int, default=None, help="load/unload cycles for the RSS figure (default 100)")
    ap.add_argument("--ref-cycles", type=int, default=None,
                    help="cycles for diffusers + PEFT (default 30 in full runs: ~1.7 s/cycle; the target is lorakit's)")
    ap.add_argument("--resident", type=int, default=20, help="resident adapters for set_adapters (default 20)")
    ap.add_argument("--groups", default="ops,switch,forward,rss,cycles,fuse,persample,cache,flux",
                    help="comma-separated subset")
    ap.add_argument("--fuse-threads", default="0,1",
                    help="thread counts of the fuse group (0: torch's default, what users get; default 0,1)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per process (default 1 on CPU: see the report's setup notes; 0: torch's default)")
    ap.add_argument("--rss-files", default="kohya", help="files for the peak-RSS figure (kohya,locon,diffusers)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--workdir", default=None, help="keep models/files here and reuse them (default: a temp dir)")
    ap.add_argument("--out", default=None, help="Markdown report (default: docs/benchmarks.md for a full CPU run, else out/)")
    ap.add_argument("--json", default=os.path.join(ROOT, "out", "benchmarks-raw.json"), help="raw results (JSON)")
    ap.add_argument("--notes", default=os.path.join(HERE, "notes.md"),
                    help="hand-written analysis appended to the report (default benchmarks/notes.md)")
    ap.add_argument("--repeat-all", action="store_true", help="repeat every group (and LoCon ops) in every round")
    ap.add_argument("--render", default=None, help="only rebuild the report from this raw JSON (no measurement)")
    ap.add_argument("--in-process", action="store_true", help="run groups in this process (smoke test only)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per measurement process")
    return ap.parse_args(argv)


def render(args: argparse.Namespace) -> int:
    """Rebuild the Markdown report from a raw JSON file of an earlier run (no measurement)."""
    with open(args.render) as fh:
        data = json.load(fh)
    report, _ = build_report(data["aggregate"], data["cross"], data["meta"])
    if args.notes and os.path.exists(args.notes):
        with open(args.notes) as fh:
            report += "\n" + fh.read()
    mode = data["meta"]["mode"]
    default = "benchmarks.md" if mode == "full" and data["meta"]["device"] == "cpu" else f"../out/benchmarks-{mode}.md"
    out = args.out or os.path.normpath(os.path.join(ROOT, "docs", default))
    with open(out, "w") as fh:
        fh.write(report)
    print(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.render:
        return render(args)
    t_start = time.perf_counter()
    size_name = "toy" if args.toy else "sdxl" if args.sdxl else "quick" if args.quick else "sd15"
    light = args.quick or args.toy
    repeats = args.repeats or (1 if light else 3)
    cycles = args.cycles or (5 if args.toy else 20 if args.quick else 100)
    inner = args.inner or (2 if args.toy else 5)
    passes = args.passes or (1 if light else 2)
    ref_cycles = args.ref_cycles or min(cycles, 30)
    resident = min(args.resident, 5) if args.toy else args.resident
    groups = [g for g in args.groups.split(",") if g]
    mode = "toy" if args.toy else "quick" if args.quick else "sdxl" if args.sdxl else "full"

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="lorakit-bench-")
        workdir = tmp
    os.makedirs(workdir, exist_ok=True)
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        main_setup = prepare(size_name, workdir, log)
        cycle_size = "toy" if args.toy else "cycle"
        cyc_setup = prepare(cycle_size, workdir, log) if {"cycles", "cache"} & set(groups) else None
        flux_setup = prepare("flux-toy" if args.toy else "flux", workdir, log) if "flux" in groups else None
        threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
        common = {"device": args.device, "dtype": args.dtype, "threads": threads or None}
        results: dict[str, dict[str, list[dict[str, Any]]]] = {g: {t: [] for t in TOOLS} for g in groups}
        outputs = {t: os.path.join(workdir, f"forward_{t}.pt") for t in TOOLS}
        n = 0
        for rnd in range(repeats):
            order = TOOLS if rnd % 2 == 0 else TOOLS[::-1]
            for group in groups:
                if group in ONCE and rnd > 0 and not args.repeat_all:
                    continue
                setup = cyc_setup if group in ("cycles", "cache") else flux_setup if group == "flux" else main_setup
                variants: list[dict[str, Any]] = [{}]
                if group == "flux":
                    variants = [{"file_order": ["diffusers"]}]
                if group == "ops":
                    # PEFT's LoCon fuse/unfuse is the slowest step of the run: LoCon is measured in round 1 only
                    files = ["kohya", "locon", "diffusers"] if rnd == 0 or args.repeat_all else ["kohya", "diffusers"]
                    variants = [{"file_order": files}]
                elif group == "rss":
                    variants = [{"file": f} for f in args.rss_files.split(",")]
                elif group == "fuse":
                    variants = [{"threads": int(x) or None} for x in args.fuse_threads.split(",")]
                for tool in order:
                    if group == "cache" and tool != "lorakit":
                        continue
                    tool_variants = variants
                    if group == "fuse" and tool == "lorakit":
                        tool_variants = [{**v, "strategy": s} for v in variants for s in FUSE_STRATEGIES]
                    for extra in tool_variants:
                        n += 1
                        n_cycles = ref_cycles if tool == "peft" else cycles
                        job = {**common, **setup, **extra, "group": "ops" if group == "flux" else group, "tool": tool,
                               "inner": inner if group == "switch" else 1,
                               "resident": resident, "cycles": n_cycles, "passes": passes,
                               "result": os.path.join(workdir, f"result_{n}.json")}
                        if group == "cache":
                            job["cycles"] = 50 if args.toy else 200 if args.quick else 1000
                        if group == "fuse":
                            job["switches"] = 2 if args.toy else 6
                        if group == "forward":
                            job["save_outputs"] = outputs[tool]
                        t0 = time.perf_counter()
                        res = run_job(job, args.in_process, args.timeout)
                        results[group][tool].append(res)
                        status = "FAILED: " + res["_error"].splitlines()[-1] if "_error" in res else "ok"
                        log(f"round {rnd + 1}/{repeats} {group:<9} {tool:<7} {' '.join(str(v) for v in extra.values())} "
                            f"{time.perf_counter() - t0:6.1f} s  {status}")
        agg = aggregate(results)
        cross = cross_tool(outputs)
        import models

        meta = {
            "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M %Z").strip(),
            "mode": mode,
            "repeats": repeats,
            "inner": inner,
            "passes": passes,
            "agree_latent": agg["lorakit"]["forward"].get("agree_latent") or agg["peft"]["forward"].get("agree_latent"),
            "size_describe": models.SIZES[size_name].describe,
            "cycle_model": (models.SIZES[cycle_size].describe + f"; {cycles} cycles of load from file + unload")
            if cyc_setup
            else "n/a",
            "dtype": args.dtype,
            "device": args.device,
            "file_sizes": {k: os.path.getsize(v) for k, v in main_setup["files"].items()},
            "flux_file_size": os.path.getsize(flux_setup["files"]["diffusers"]) if flux_setup else 0,
            "flux_describe": models.SIZES["flux"].describe,
            "machine": machine_info(),
            "load_start": load_start,
            "load_end": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "versions": versions(common["threads"]),
            "command": "benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "wall_s": time.perf_counter() - t_start,
        }
        report, verdicts = build_report(agg, cross, meta)
        if args.notes and os.path.exists(args.notes):
            with open(args.notes) as fh:
                report += "\n" + fh.read()
        default = "benchmarks.md" if mode == "full" and args.device == "cpu" else f"../out/benchmarks-{mode}-{args.device}.md"
        out = args.out or os.path.normpath(os.path.join(ROOT, "docs", default))
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as fh:
            fh.write(report)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as fh:
                json.dump({"results": results, "aggregate": agg, "cross": cross, "meta": meta, "verdicts": verdicts}, fh, indent=1)
        print(report)
        log(f"report written to {out}")
        return 0
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
