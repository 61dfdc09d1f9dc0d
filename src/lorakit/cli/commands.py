"""The subcommands: ``inspect``, ``convert``, ``list``, ``generate``, ``bake`` and ``demo``.

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

from .. import __version__, formats
from ..conversion import convert
from ..errors import LorakitError, SourceNotFoundError
from ..families import detect
from ..inspection import inspect
from ..io import file_hashes, read_header, read_source
from ..kinds import AdapterKind
from ..report import LoadReport
from .console import CliError, Console, one_line
from .demo import run_demo
from .prompt import LoraSpec, list_loras, lora_tag_name, plan_loras
from .session import (
    family_of,
    load_loras,
    load_pipeline,
    module_components,
    resolve_device,
    resolve_dtype,
    saved_dtype,
)

__all__ = [
    "COMMANDS",
    "a1111_parameters",
    "cmd_bake",
    "cmd_convert",
    "cmd_demo",
    "cmd_generate",
    "cmd_inspect",
    "cmd_list",
    "output_paths",
    "sampler_name",
]

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
            report = inspect(src, model=pipe, weight_name=args.weight_name, hashes=not args.no_hashes)
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
            console.error(one_line(exc))
            results.append({"source": src, "error": one_line(exc)})
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
    """Rewrite a file in another layout (:func:`lorakit.convert`); ``--model`` resolves names against a pipeline."""
    components = None
    if args.model:
        with console.step(f"loaded {args.model} to resolve module names against") as st:
            pipe = load_pipeline(args.model, dtype=None, device="cpu")
            st["note"] = type(pipe).__name__
        components = module_components(pipe)
    with console.step(f"converted {args.file} to {args.to}"):
        report = convert(args.file, args.output, to=args.to, overwrite=args.force, family=args.family,
                         components=components, component=args.component, weight_name=args.weight_name)
    console.result(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
    return 0


# ----------------------------------------------------------------------------------------------- list
def _ranks_text(ranks: dict[int, int]) -> str:
    if not ranks:
        return "-"
    lo, hi = min(ranks), max(ranks)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _size_text(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def list_entry(path: Path, dirs: Sequence[str], hashes: bool = False) -> dict[str, Any]:
    """What ``lorakit list`` says about one file (``error`` instead of the description when it is not a LoRA)."""
    name = lora_tag_name(path, dirs)
    entry: dict[str, Any] = {"file": str(path), "name": name, "tag": f"<lora:{name}>"}
    try:
        rep = inspect(path, hashes=hashes)
    except LorakitError as exc:
        entry["error"] = one_line(exc)
        return entry
    entry.update(
        family=rep.family,
        format=rep.format,
        kinds=rep.kinds,
        components=rep.components,
        ranks=rep.ranks,
        size=rep.file_size,
        trigger_words=rep.trigger_words,
        title=rep.title,
        header_only=rep.header_only,
    )
    if rep.hashes:
        entry["hashes"] = rep.hashes
    return entry


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    """The LoRA files under the folders, each with the ``<lora:NAME>`` that resolves to it (header only)."""
    for d in args.dirs:
        if not Path(d).is_dir():
            raise SourceNotFoundError(f"{d}: no such folder")
    entries = [list_entry(p, args.dirs, args.hashes) for d in args.dirs for p in list_loras(d)]
    failed = sum("error" in e for e in entries)
    if args.json:
        console.result(json.dumps(entries, indent=2))
        return 1 if failed else 0
    if not entries:
        console.result(f"no LoRA files under {', '.join(args.dirs)}")
        return 0
    rows = [("tag", "family", "kinds", "rank", "size", "trigger words")]
    for e in entries:
        if "error" in e:
            rows.append((e["tag"], "-", "-", "-", "-", f"error: {e['error']}"))
            continue
        kinds = ", ".join(e["kinds"]) or "-"
        rows.append((e["tag"], e["family"], kinds, _ranks_text(e["ranks"]), _size_text(e["size"]),
                     ", ".join(e["trigger_words"]) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        console.result("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    for e in entries:
        if e.get("hashes"):
            h = e["hashes"]
            console.result(f"{e['tag']}: sha256 {h['sha256']}, AutoV2 {h['autov2']}, A1111 {h['lora_hash_short']}")
    console.info(f"{len(entries) - failed} LoRA file(s)" + (f", {failed} not readable as a LoRA" if failed else ""))
    return 1 if failed else 0


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


#: image suffixes ``-o`` may end in
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def output_paths(out: Path, n: int, seeds: Sequence[int] | None = None, *, folder: bool = False) -> list[Path]:
    """``out.png`` for one image, ``out-1.png`` … ``out-N.png`` for several; into a folder: ``lorakit-SEED.png``
    per image."""
    if folder:
        seeds = list(seeds) if seeds is not None else list(range(n))
        return [out / f"lorakit-{s}.png" for s in seeds[:n]]
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix or '.png'}") for i in range(n)]


def _is_folder_output(text: str) -> bool:
    """``-o`` names a folder: it exists as one, ends with a separator, or has no suffix."""
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)) or not path.suffix:
        return True
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise CliError(f"-o {text}: expected an image file name (.png, .jpg, .webp) or a folder (ending in /)")
    return False


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype or "default dtype").replace("torch.", "")


#: diffusers scheduler class -> the sampler name A1111 writes (and reads back)
SAMPLER_NAMES = {
    "EulerAncestralDiscreteScheduler": "Euler a",
    "EulerDiscreteScheduler": "Euler",
    "FlowMatchEulerDiscreteScheduler": "Euler",
    "LMSDiscreteScheduler": "LMS",
    "HeunDiscreteScheduler": "Heun",
    "KDPM2DiscreteScheduler": "DPM2",
    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "DPMSolverSinglestepScheduler": "DPM++ SDE",
    "DPMSolverSDEScheduler": "DPM++ SDE",
    "DDIMScheduler": "DDIM",
    "DDPMScheduler": "DDPM",
    "PNDMScheduler": "PLMS",
    "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM",
}


def sampler_name(scheduler: Any) -> tuple[str, str | None]:
    """``(A1111 sampler name, schedule type or None)`` of a diffusers scheduler (its class name when A1111 has no
    name for it; ``"Karras"`` when it uses Karras sigmas)."""
    cls = type(scheduler).__name__
    name = SAMPLER_NAMES.get(cls, cls.removesuffix("Scheduler"))
    config = getattr(scheduler, "config", {}) or {}
    karras = bool(config.get("use_karras_sigmas", False)) if hasattr(config, "get") else False
    if cls == "DPMSolverMultistepScheduler" and config.get("algorithm_type") == "sde-dpmsolver++":
        name = "DPM++ 2M SDE"
    return name, "Karras" if karras else None


def _quote(value: object) -> str:
    """A1111's rule for infotext values: as they are, or JSON-quoted when they hold ``,``, ``:`` or a newline."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _tag(spec: LoraSpec) -> str:
    weights = f"{spec.unet:g}" if spec.te == spec.unet else f"{spec.te:g}:{spec.unet:g}"
    return f"<lora:{spec.name}:{weights}>"


def a1111_parameters(
    prompt: str,
    negative_prompt: str | None,
    fields: Sequence[tuple[str, object]],
) -> str:
    """The ``parameters`` text A1111 writes into a PNG and reads back (``parse_generation_parameters``): the prompt,
    ``Negative prompt: …`` when there is one, then ``Key: value, …`` with A1111's quoting. ``None`` values are left
    out."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields if v is not None))
    return "\n".join(lines)


def _lora_hash(path: Path) -> str:
    """A1111's short LoRA hash of a file: the header's ``sshs_model_hash`` when there is one, else the addnet hash."""
    header_hash = None
    try:
        header_hash = read_header(path)[1].get("sshs_model_hash")
    except LorakitError:  # a pickle: no header, the whole file's sha256
        pass
    return file_hashes(path, header_lora_hash=header_hash).lora_hash_short


def _model_name(model: str) -> str:
    path = Path(model).expanduser()
    return path.name if path.is_dir() else model


def _default_guidance(pipe: Any) -> float | None:
    param = pyinspect.signature(pipe.__call__).parameters.get("guidance_scale")
    if param is None or not isinstance(param.default, (int, float)):
        return None
    return float(param.default)


#: the families whose pipelines take one generator per image of a batch (a list); others are called per image
_GENERATOR_LISTS = {"sd1", "sd2", "sdxl", "sd3", "flux"}


class _StepClock:
    """Times denoising steps through the pipeline's ``callback_on_step_end`` (when it has one)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last = 0.0

    def start(self) -> None:
        self._last = time.perf_counter()

    def tick(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now
        return callback_kwargs

    def summary(self, n_steps: int, seconds: float) -> str:
        """``per step …``: the median step and the first one when timed, else the call's time over its steps."""
        if not self.times:
            return f"per step {seconds / max(n_steps, 1):.3f} s (average over {n_steps} steps)"
        ordered = sorted(self.times)
        median = ordered[len(ordered) // 2]
        return (f"per step {median:.3f} s (median of {len(self.times)}; first {self.times[0]:.3f} s, "
                f"slowest {ordered[-1]:.3f} s)")


def cmd_generate(args: argparse.Namespace, console: Console) -> int:
    """Load a pipeline and the LoRAs (``--lora`` files and prompt tags), generate, write the images with the
    ``parameters`` text A1111 reads back."""
    if args.steps < 1 or args.num_images < 1:
        raise CliError(f"--steps and --num-images must be at least 1 (got {args.steps} and {args.num_images})")
    if args.threads is not None:
        if args.threads < 1:
            raise CliError(f"--threads must be at least 1 (got {args.threads})")
        torch.set_num_threads(args.threads)
    folder = _is_folder_output(args.output)
    prompt, specs = plan_loras(args.prompt or "", args.lora or [], _lora_dirs(args), negative_prompt=args.negative_prompt)
    out = Path(args.output)
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
    seeds = [args.seed + i for i in range(args.num_images)]
    family = detect.of_components(module_components(pipe))
    batched = args.num_images == 1 or (family is not None and family.name in _GENERATOR_LISTS)
    calls = [seeds] if batched else [[s] for s in seeds]
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
            "generator": 0,  # one per image, below
        },
        console,
    )
    steps = _StepClock()
    if "callback_on_step_end" in pyinspect.signature(pipe.__call__).parameters:
        kwargs["callback_on_step_end"] = steps.tick
    images: list[Any] = []
    with console.step(f"generated {args.num_images} image(s)") as st:
        for call_seeds in calls:
            generators = [torch.Generator(device="cpu").manual_seed(s) for s in call_seeds]
            kwargs["generator"] = generators if len(generators) > 1 else generators[0]
            if "num_images_per_prompt" in kwargs:
                kwargs["num_images_per_prompt"] = len(call_seeds)
            steps.start()
            images += list(pipe(**kwargs).images)
        st["note"] = f"{images[0].size[0]}x{images[0].size[1]}" if images else "no image"
    console.info(steps.summary(args.steps * len(calls), console.timings[-1][1]) + f", {torch.get_num_threads()} torch thread(s)")
    # what A1111 writes: the prompt as typed with its tags (plus a tag per --lora file the prompt does not name)
    tagged = {s.name for s in specs if not s.origin.startswith("--lora")}
    shown_prompt = " ".join([args.prompt or "", *(_tag(s) for s in specs if s.name not in tagged)]).strip()
    sampler, schedule = sampler_name(getattr(pipe, "scheduler", None))
    cfg = args.guidance if args.guidance is not None else _default_guidance(pipe)
    lora_hashes = ", ".join(f"{s.name.replace(':', '').replace(',', '')}: {_lora_hash(s.path)}" for s in specs)
    paths = output_paths(out, len(images), seeds, folder=folder)
    (out if folder else out.parent).mkdir(parents=True, exist_ok=True)
    for path, image, seed in zip(paths, images, seeds):
        params = a1111_parameters(
            shown_prompt,
            args.negative_prompt,
            [
                ("Steps", args.steps),
                ("Sampler", sampler),
                ("Schedule type", schedule),
                ("CFG scale", None if cfg is None else f"{cfg:g}"),
                ("Seed", seed),
                ("Size", f"{image.size[0]}x{image.size[1]}"),
                # a diffusers folder or Hub id is no single checkpoint file: A1111 and civitai have no hash of it
                ("Model", _model_name(args.model)),
                ("Lora hashes", lora_hashes or None),
                ("Fused", "True" if args.fuse and specs else None),
                ("Version", f"lorakit {__version__}"),
            ],
        )
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
    "list": cmd_list,
    "generate": cmd_generate,
    "bake": cmd_bake,
    "demo": cmd_demo,
}
