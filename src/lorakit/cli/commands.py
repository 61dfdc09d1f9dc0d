"""The subcommands: ``inspect``, ``convert``, ``generate``, ``bake`` and ``demo``.

Each is ``cmd_<name>(args, console) -> exit status``; :data:`COMMANDS` maps the names the parser gives to them.
"""

from __future__ import annotations

import argparse
import inspect as pyinspect
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import PngImagePlugin

from .. import formats
from ..conversion import convert
from ..errors import DestinationExistsError, LorakitError, SourceNotFoundError
from ..inspection import inspect
from ..io import read_source
from ..kinds import AdapterKind
from ..report import LoadReport
from .console import CliError, Console
from .demo import run_demo
from .prompt import LoraSpec, plan_loras
from .session import (
    family_of,
    load_loras,
    load_pipeline,
    module_components,
    resolve_device,
    resolve_dtype,
    saved_dtype,
)

__all__ = ["COMMANDS", "cmd_bake", "cmd_convert", "cmd_demo", "cmd_generate", "cmd_inspect", "output_paths"]

#: environment variable with the default ``--lora-dir`` folders (``os.pathsep``-separated)
LORA_DIR_ENV = "LORAKIT_LORA_DIR"


# ----------------------------------------------------------------------------------------------- inspect
def _landed(path: str, pipe: Any, weight_name: str | None) -> tuple[dict[str, dict[str, Any]], LoadReport]:
    """Per component the module paths the file lands on (kind, rank, alpha, feeding keys), and the conversion
    report."""
    sd, metadata, name = read_source(path, weight_name=weight_name)
    conv = formats.to_canonical(sd, metadata, module_components(pipe), source=name)
    # Which file keys feed which module, without knowing the layout: the canonical kinds hold the file's tensors
    # (or views of them), so a shared storage links a key to its module. Keys whose values were copied (cast,
    # reshaped by a converter) or folded into a number (alphas) are not listed.
    owner: dict[int, list[str]] = {}
    for key, t in sd.items():
        if t.numel() > 1:
            owner.setdefault(t.untyped_storage().data_ptr(), []).append(key)
    landed: dict[str, dict[str, Any]] = {}
    for comp, mapping in conv.adapters.items():
        for mod, kind in sorted(mapping.items()):
            landed.setdefault(comp, {})[mod] = {
                "kind": kind.kind_name,
                "rank": kind.rank,
                "alpha": _alpha_of(kind),
                "keys": _feeding_keys(kind, owner),
            }
    return landed, conv.report


def _alpha_of(kind: AdapterKind) -> float | None:
    alpha = getattr(kind, "alpha", None)
    return None if alpha is None else float(alpha)


def _feeding_keys(kind: AdapterKind, owner: dict[int, list[str]]) -> list[str]:
    keys: list[str] = []
    for _, t in kind.named_tensors():
        for key in owner.get(t.untyped_storage().data_ptr(), []):
            if key not in keys:
                keys.append(key)
    return sorted(keys)


def _key_stem(keys: Sequence[str]) -> str:
    """``a.lora_down.weight``, ``a.lora_up.weight`` -> ``a.{lora_down.weight, lora_up.weight}``."""
    if not keys:
        return "-"
    if len(keys) == 1:
        return keys[0]
    prefix = os.path.commonprefix(list(keys))
    cut = prefix.rfind(".") + 1 if "." in prefix else 0
    return f"{keys[0][:cut]}{{{', '.join(k[cut:] for k in keys)}}}" if cut else ", ".join(keys)


def _skipped(report: LoadReport | None) -> list[dict[str, Any]]:
    if report is None:
        return []
    return [
        {"key": s.key, "reason": s.reason, "component": s.component, "closest": list(s.closest)}
        for s in report.skipped
    ]


def cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    """Describe each file (header only for safetensors); with ``--model`` also where its keys land."""
    pipe = None
    if args.model:
        with console.step(f"loaded {args.model} for coverage") as st:
            pipe = load_pipeline(args.model, dtype=None, device="cpu")
            st["note"] = type(pipe).__name__
    results: list[dict[str, Any]] = []
    failed = 0
    for i, src in enumerate(args.files):
        landed: dict[str, dict[str, Any]] = {}
        skipped: list[dict[str, Any]] = []
        landing_error = None
        try:
            report = inspect(src, model=pipe, weight_name=args.weight_name)
            data = report.to_dict()
            if pipe is not None:
                try:
                    landed, conv_report = _landed(src, pipe, args.weight_name)
                    skipped = _skipped(conv_report)
                except LorakitError as exc:  # e.g. shapes of another family: the report says so, inspect goes on
                    landing_error = str(exc)
                    skipped = _skipped(exc.report)
                data["landed"] = landed
                data["not_landed"] = skipped
                data["landing_error"] = landing_error
        except LorakitError as exc:
            if args.verbose:
                console.traceback()
            failed += 1
            console.error(str(exc))
            results.append({"source": src, "error": str(exc)})
            continue
        results.append(data)
        if args.json:
            continue
        if i:
            console.result()
        console.result(report.format_table())
        if pipe is not None:
            if landing_error:
                console.result(f"cannot load into {args.model}: {landing_error}")
            _print_landing(console, landed, skipped, show_all=args.modules)
    if args.json:
        console.result(json.dumps(results, indent=2))
    return 1 if failed else 0


def _print_landing(
    console: Console, landed: dict[str, dict[str, Any]], skipped: list[dict[str, Any]], show_all: bool
) -> None:
    limit = None if show_all else 5
    for comp, mods in landed.items():
        console.result(f"lands on {comp}: {len(mods)} modules")
        for j, (mod, k) in enumerate(mods.items()):
            if limit is not None and j >= limit:
                console.result(f"    … {len(mods) - limit} more (--modules lists all)")
                break
            alpha = "-" if k["alpha"] is None else f"{k['alpha']:g}"
            console.result(f"    {_key_stem(k['keys'])} -> {comp}.{mod}  ({k['kind']}, rank {k['rank']}, alpha {alpha})")
    if skipped:
        console.result(f"does not land: {len(skipped)} keys")
        for j, s in enumerate(skipped):
            if limit is not None and j >= limit:
                console.result(f"    … {len(skipped) - limit} more (--modules lists all)")
                break
            hint = f" (closest: {', '.join(s['closest'][:2])})" if s["closest"] else ""
            console.result(f"    {s['key']}: {s['reason']}{hint}")
    elif landed:
        console.result("every key lands")
    else:
        console.result("nothing lands")


# ----------------------------------------------------------------------------------------------- convert
def cmd_convert(args: argparse.Namespace, console: Console) -> int:
    """Rewrite a file in another layout (:func:`lorakit.convert`)."""
    with console.step(f"converted {args.file} to {args.to}"):
        try:
            report = convert(args.file, args.output, to=args.to, overwrite=args.force, family=args.family,
                             weight_name=args.weight_name)
        except DestinationExistsError as exc:
            where = str(exc).split(":")[0] or args.output
            raise DestinationExistsError(f"{where}: already exists; pass --force to overwrite it") from exc
    console.result(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
    return 0


# ----------------------------------------------------------------------------------------------- generate
def _lora_dirs(args: argparse.Namespace) -> list[str]:
    dirs = list(args.lora_dir or [])
    env = os.environ.get(LORA_DIR_ENV)
    if env and not dirs:
        dirs = [d for d in env.split(os.pathsep) if d]
    for d in dirs:
        if not Path(d).is_dir():
            raise SourceNotFoundError(f"--lora-dir {d}: no such folder")
    return dirs


def _call_kwargs(pipe: Any, wanted: dict[str, Any], console: Console) -> dict[str, Any]:
    params = set(pyinspect.signature(pipe.__call__).parameters)
    kwargs = {}
    for key, value in wanted.items():
        if value is None:
            continue
        if key in params:
            kwargs[key] = value
        else:
            console.warn(f"{type(pipe).__name__} does not take {key}; ignored")
    return kwargs


def _png_info(text: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    return info


def output_paths(out: Path, n: int) -> list[Path]:
    """``out.png`` for one image, ``out-1.png`` … ``out-N.png`` for several."""
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix or '.png'}") for i in range(n)]


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype or "default dtype").replace("torch.", "")


def cmd_generate(args: argparse.Namespace, console: Console) -> int:
    """Load a pipeline and the LoRAs (``--lora`` files and prompt tags), generate, write the images."""
    if args.steps < 1 or args.num_images < 1:
        raise CliError(f"--steps and --num-images must be at least 1 (got {args.steps} and {args.num_images})")
    prompt, specs = plan_loras(args.prompt or "", args.lora or [], _lora_dirs(args), negative_prompt=args.negative_prompt)
    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise CliError(f"-o {args.output}: expected an image file name (.png, .jpg, .webp)")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    t_start = time.perf_counter()
    with console.step(f"loaded {args.model}") as st:
        pipe = load_pipeline(args.model, dtype=dtype, device=device)
        st["note"] = f"{type(pipe).__name__} ({family_of(pipe)}) on {device}, {_dtype_name(dtype)}"
    load_loras(pipe, specs, console)
    if args.fuse and specs:
        with console.step("fused the LoRAs into the weights and dropped the adapters (no per-call overhead)"):
            pipe.fuse_lora(adapter_names=[s.name for s in specs])
            pipe.unload_lora_weights()  # keeps the fused weights, removes the hooks
    if not specs:
        console.info("no LoRA given (use --lora FILE[:WEIGHT] or <lora:name:weight> in the prompt)")
    console.info(f"prompt: {prompt!r}")
    pipe.set_progress_bar_config(disable=console.quiet, desc="denoising")
    width, height = args.size if args.size else (None, None)
    kwargs = _call_kwargs(
        pipe,
        {
            "prompt": prompt,
            "negative_prompt": args.negative_prompt,
            "num_inference_steps": args.steps,
            "guidance_scale": args.guidance,
            "height": height,
            "width": width,
            "num_images_per_prompt": args.num_images if args.num_images != 1 else None,
            "generator": torch.Generator(device="cpu").manual_seed(args.seed),
        },
        console,
    )
    with console.step(f"generated {args.num_images} image(s)") as st:
        images = pipe(**kwargs).images
        st["note"] = f"{images[0].size[0]}x{images[0].size[1]}" if images else "no image"
    params = (
        f"{prompt}\nNegative prompt: {args.negative_prompt or ''}\nSteps: {args.steps}, Seed: {args.seed}, "
        f"Guidance: {args.guidance}, Model: {args.model}, LoRAs: "
        + (", ".join(f"{s.name}:{s.te:g}:{s.unet:g}" for s in specs) or "none")
        + f", Fused: {bool(args.fuse)}, lorakit"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, image in zip(output_paths(out, len(images)), images):
        if path.suffix.lower() == ".png":
            image.save(path, pnginfo=_png_info(params))
        else:
            image.save(path)
        console.result(f"wrote {path}")
    console.info(f"total {time.perf_counter() - t_start:.2f} s")
    return 0


# ----------------------------------------------------------------------------------------------- bake
def _check_unload_kept_weights(comps: dict[str, torch.nn.Module], keys_before: dict[str, list[str]],
                               fused: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, m in comps.items():
        sd = m.state_dict()
        if list(sd.keys()) != keys_before[name]:
            extra = sorted(set(sd) - set(keys_before[name]))
            raise CliError(f"bake: {name} has extra state_dict keys after unloading ({extra[:3]}); not saving")
        for k, v in sd.items():
            if not torch.equal(v, fused[name][k]):
                raise CliError(f"bake: {name}.{k} changed when the adapters were unloaded; not saving")


def cmd_bake(args: argparse.Namespace, console: Console) -> int:
    """Fuse LoRAs into a pipeline and save it with ``save_pretrained`` (loads with plain diffusers)."""
    if not args.lora:
        raise CliError("bake: give at least one --lora FILE[:WEIGHT]")
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise CliError(f"-o {out}: already exists and is not empty; pass --force to write into it")
    specs: list[LoraSpec] = plan_loras("", args.lora, [])[1]
    device = resolve_device(args.device)
    dtype = saved_dtype(args.model) if args.dtype is None else resolve_dtype(args.dtype, device)
    with console.step(f"loaded {args.model}") as st:
        pipe = load_pipeline(args.model, dtype=dtype, device=device)
        how = "as saved" if args.dtype is None else "--dtype"
        st["note"] = f"{type(pipe).__name__} ({family_of(pipe)}), {_dtype_name(dtype)} ({how})"
    comps = module_components(pipe)
    keys_before = {name: list(m.state_dict().keys()) for name, m in comps.items()}
    load_loras(pipe, specs, console)
    with console.step("fused the LoRAs into the weights"):
        pipe.fuse_lora(adapter_names=[s.name for s in specs])
    fused = {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in comps.items()}
    with console.step("unloaded the adapters (the fused weights stay)"):
        pipe.unload_lora_weights()
    _check_unload_kept_weights(comps, keys_before, fused)
    del fused
    with console.step(f"saved the baked pipeline to {out}"):
        out.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(str(out), safe_serialization=True)
    console.result(f"wrote {out} ({', '.join(s.name + ':' + format(s.unet, 'g') for s in specs)} fused into "
                   f"{type(pipe).__name__}); load it with DiffusionPipeline.from_pretrained({str(out)!r})")
    return 0


# ----------------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """The offline end-to-end demo on a tiny pipeline (:func:`lorakit.cli.demo.run_demo`)."""
    return run_demo(Path(args.output), console, family=args.family, steps=args.steps)


#: subcommand name -> its function
COMMANDS: dict[str, Callable[[argparse.Namespace, Console], int]] = {
    "inspect": cmd_inspect,
    "convert": cmd_convert,
    "generate": cmd_generate,
    "bake": cmd_bake,
    "demo": cmd_demo,
}
