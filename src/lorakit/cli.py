"""The ``lorakit`` command: inspect, convert, generate (with ``<lora:name:weight>`` prompt tags), bake, demo.

Run ``lorakit --help`` or ``python -m lorakit --help``; ``docs/cli.md`` has an example per subcommand.

Conventions: results and step lines (``[ 0.12 s] loaded ...``) go to stdout, step lines move to stderr when stdout
carries ``--json``; warnings, logs, progress bars and errors go to stderr. ``-q`` keeps only results and errors,
``-v`` adds lorakit's info/debug logs and full tracebacks. Errors print one line ``lorakit: error: ...`` and exit 1 (2 for
a bad command line). Heavy imports (torch, diffusers) happen inside the subcommands so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import inspect as pyinspect
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from .errors import LorakitError, SourceNotFoundError

__all__ = ["main", "build_parser", "Console", "CliError", "load_pipeline"]

logger = logging.getLogger(__name__)

#: denoiser component names (the ``unet=`` side of a ``<lora:...>`` weight); everything else is a text encoder
DENOISERS = ("unet", "transformer", "prior", "decoder")
#: ``--model tiny:FAMILY`` builds a tiny seeded pipeline (no download)
TINY_PREFIX = "tiny:"


class CliError(LorakitError):
    """A command-line level problem (bad option value, missing feature) reported as one line."""


# ----------------------------------------------------------------------------------------------- output
class Console:
    """Where the command writes: results to ``out`` (always), step lines to ``err`` (unless quiet)."""

    def __init__(self, quiet: bool = False, verbose: int = 0, out: TextIO | None = None, err: TextIO | None = None):
        self.quiet = quiet
        self.verbose = verbose
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.timings: list[tuple[str, float]] = []
        #: stdout is reserved for one JSON document
        self.json = False

    def result(self, text: str = "") -> None:
        """A result line (stdout, also with ``-q``)."""
        print(text, file=self.out, flush=True)

    def info(self, text: str = "") -> None:
        """A progress / report line (stdout, or stderr while stdout carries JSON; hidden by ``-q``)."""
        if not self.quiet:
            print(text, file=self.err if self.json else self.out, flush=True)

    def warn(self, text: str) -> None:
        """A warning line (stderr, also with ``-q``)."""
        print(f"lorakit: warning: {text}", file=self.err, flush=True)

    @contextmanager
    def step(self, label: str) -> Iterator[dict[str, Any]]:
        """Time a step and print ``[  1.23 s] label: note`` when it ends (the yielded dict may set ``note``)."""
        extra: dict[str, Any] = {}
        t0 = time.perf_counter()
        yield extra
        dt = time.perf_counter() - t0
        self.timings.append((label, dt))
        note = f": {extra['note']}" if extra.get("note") else ""
        self.info(f"[{dt:6.2f} s] {label}{note}")


@contextmanager
def logging_for(verbosity: int, libraries: bool = True) -> Iterator[None]:
    """Logging for one command; everything is put back afterwards (``main`` may run in-process, e.g. in tests).

    lorakit's logger: -q errors, default warnings, -v info, -vv debug, to stderr. diffusers: -q errors, default and
    -v warnings, -vv info; transformers one step quieter (by default it warns about optional backends such as
    torchvision that say nothing about the command). ``-q`` also turns the libraries' progress bars off.
    """
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    log = logging.getLogger("lorakit")
    saved = (log.level, log.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    restore: list[Any] = []
    if libraries:
        try:
            from diffusers.utils import logging as dlog
            from transformers.utils import logging as tlog
        except Exception:  # noqa: BLE001 - logging setup must never break a command
            dlog = tlog = None
        for lib, lib_level in ((dlog, {-1: logging.ERROR, 0: logging.WARNING, 1: logging.WARNING}),
                               (tlog, {-1: logging.ERROR, 0: logging.ERROR, 1: logging.WARNING})):
            if lib is None:
                continue
            restore.append((lib, lib.get_verbosity(), lib.is_progress_bar_enabled()))
            lib.set_verbosity(lib_level.get(verbosity, logging.INFO))
            if verbosity < 0:
                lib.disable_progress_bar()
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]
        for lib, verb, bars in restore:
            lib.set_verbosity(verb)
            (lib.enable_progress_bar if bars else lib.disable_progress_bar)()


# ----------------------------------------------------------------------------------------------- helpers
def parse_size(text: str) -> tuple[int, int]:
    """``"768x512"`` -> ``(768, 512)`` (width, height); ``"512"`` -> ``(512, 512)``."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 768x512") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) <= 0:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected WIDTHxHEIGHT with positive numbers")
    return nums[0], nums[1]


def resolve_device(name: str) -> str:
    """``"auto"`` -> ``cuda`` / ``mps`` when available, else ``cpu``; other names are checked to exist."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    from .engine import resolve_device as check

    return str(check(name))


_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def resolve_dtype(name: str | None, device: str) -> Any:
    """``"auto"`` -> float16 on accelerators, float32 on CPU; ``None`` -> keep what the checkpoint has."""
    import torch

    if name is None:
        return None
    if name == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    try:
        return getattr(torch, _DTYPES[name.lower()])
    except KeyError:
        raise CliError(f"--dtype {name}: expected one of auto, float32, float16, bfloat16") from None


def saved_dtype(model: str) -> Any:
    """The dtype a local pipeline folder's denoiser was saved in (``None`` when unknown: a Hub id, no safetensors).

    diffusers loads denoisers in float32 unless told otherwise, which would make ``bake`` of a float16 folder write
    twice the bytes; reading the header keeps the saved precision.
    """
    from collections import Counter

    from . import io as lio

    folder = Path(model).expanduser()
    if model.startswith(TINY_PREFIX) or not folder.is_dir():
        return None
    counts: Counter[Any] = Counter()
    for sub in ("unet", "transformer", "prior", "decoder"):
        for f in sorted((folder / sub).glob("*.safetensors")) if (folder / sub).is_dir() else []:
            try:
                shapes, _ = lio.read_header(f)
            except LorakitError:
                continue
            counts.update(dt for _, dt in shapes.values() if dt.is_floating_point)
        if counts:
            break
    return counts.most_common(1)[0][0] if counts else None


def load_pipeline(model: str, *, dtype: Any = None, device: str = "cpu") -> Any:
    """Load a diffusers pipeline from a local folder or Hub id (``DiffusionPipeline.from_pretrained``), or build a
    tiny seeded one for ``tiny:sd1`` / ``tiny:sd2`` / ``tiny:sdxl`` / ``tiny:sd3`` / ``tiny:amused``.

    Raises:
        SourceNotFoundError: a path that is neither a pipeline folder nor a Hub id.
        CliError: a single-file checkpoint (needs a diffusers folder).
    """
    import torch

    if model.startswith(TINY_PREFIX):
        from .tiny import FAMILIES, tiny_pipeline

        family = model[len(TINY_PREFIX) :]
        if family not in FAMILIES:
            raise CliError(f"--model {model}: unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")
        pipe = tiny_pipeline(family, dtype=dtype or torch.float32)
    else:
        from diffusers import DiffusionPipeline

        path = Path(model).expanduser()
        if path.is_file():
            raise CliError(
                f"--model {model}: a single-file checkpoint; lorakit needs a diffusers pipeline folder or Hub id "
                "(convert it with diffusers' from_single_file(...).save_pretrained(DIR))"
            )
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise SourceNotFoundError(f"--model {model}: not a diffusers pipeline folder (no model_index.json)")
            model = str(path)
        elif model.count("/") != 1 or model.startswith((".", "/", "~")):
            raise SourceNotFoundError(f"--model {model}: no such folder, and not a Hub id (owner/name)")
        kwargs: dict[str, Any] = {}
        if dtype is not None:
            from diffusers.pipelines import pipeline_utils

            # diffusers >= 0.36 renamed torch_dtype to dtype (the old name warns)
            kwargs["dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"] = dtype
        try:
            pipe = DiffusionPipeline.from_pretrained(model, **kwargs)
        except OSError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise SourceNotFoundError(f"--model {model}: cannot load the pipeline: {first}") from exc
    if device != "cpu":
        pipe = pipe.to(device)
    return pipe


def attach(pipe: Any) -> Any:
    """``lorakit.attach(pipe)``, with a clear error when this build does not have it."""
    try:
        from .pipelines import attach as _attach
    except ImportError as exc:
        raise CliError(f"this lorakit build has no pipeline support (lorakit.pipelines: {exc})") from None
    return _attach(pipe)


def module_components(pipe: Any) -> dict[str, Any]:
    """``{name: nn.Module}`` of a pipeline."""
    from torch import nn

    return {k: v for k, v in getattr(pipe, "components", {}).items() if isinstance(v, nn.Module)}


def family_of(pipe: Any) -> str:
    """A short family label from the pipeline class (for messages only)."""
    name = type(pipe).__name__
    for needle, fam in (("StableDiffusion3", "SD3"), ("StableDiffusionXL", "SDXL"), ("Amused", "aMUSEd"),
                        ("StableDiffusion", "SD1/SD2")):
        if needle in name:
            return fam
    return name


def _lora_components(pipe: Any, name: str) -> list[str]:
    get = getattr(pipe, "get_list_adapters", None)
    if callable(get):
        try:
            return [c for c, names in get().items() if name in names]
        except Exception:  # noqa: BLE001 - only used to build per-component weights
            pass
    return list(module_components(pipe))


def adapter_weight(pipe: Any, spec: Any) -> float | dict[str, float]:
    """The ``set_adapters`` weight of a :class:`lorakit.prompt.LoraSpec`: a float, or per component when the
    text-encoder and denoiser weights differ."""
    if spec.te == spec.unet:
        return float(spec.unet)
    return {c: float(spec.unet if c in DENOISERS else spec.te) for c in _lora_components(pipe, spec.name)}


def load_report(pipe: Any, name: str, returned: Any = None) -> Any:
    """The load report of adapter ``name`` (returned by ``load_lora_weights``, or kept in the managers' info)."""
    if returned is not None and hasattr(returned, "summary"):
        return returned
    from .engine import get_manager

    for comp in module_components(pipe).values():
        mgr = get_manager(comp, create=False)
        if mgr is not None and name in mgr.info:
            rep = mgr.info[name].get("report")
            if rep is not None:
                return rep
    return None


def _report_lines(report: Any) -> list[str]:
    if report is None:
        return []
    summary = getattr(report, "summary", None)
    text = summary() if callable(summary) else str(report)
    return ["    " + line for line in text.splitlines()]


def load_loras(pipe: Any, specs: Sequence[Any], console: Console) -> list[Any]:
    """Load every :class:`LoraSpec` into ``pipe`` and activate them with their weights. Returns the reports."""
    reports = []
    for spec in specs:
        with console.step(f"loaded LoRA {spec.name!r} from {spec.path}") as st:
            ret = pipe.load_lora_weights(str(spec.path), adapter_name=spec.name)
            weights = f"{spec.unet:g}" if spec.te == spec.unet else f"te {spec.te:g}, unet {spec.unet:g}"
            st["note"] = f"weight {weights} ({spec.origin})"
        rep = load_report(pipe, spec.name, ret)
        reports.append(rep)
        for line in _report_lines(rep):
            console.info(line)
        total, matched = getattr(rep, "total_keys", 0), getattr(rep, "matched_keys", 0)
        if total and matched < total:  # partial loads are never silent, not even with -q
            console.warn(f"LoRA {spec.name!r}: {total - matched} of {total} keys did not land (see its load report)")
    if specs:
        pipe.set_adapters([s.name for s in specs], adapter_weights=[adapter_weight(pipe, s) for s in specs])
    return reports


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


def _png_info(text: str) -> Any:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    return info


def output_paths(out: Path, n: int) -> list[Path]:
    """``out.png`` for one image, ``out-1.png`` … ``out-N.png`` for several."""
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix or '.png'}") for i in range(n)]


# ----------------------------------------------------------------------------------------------- inspect
def _landed(path: str, pipe: Any, weight_name: str | None) -> tuple[dict[str, dict[str, Any]], Any]:
    """Per component the module paths the file lands on (kind, rank, alpha), and the conversion report."""
    from . import formats
    from . import io as lio

    sd, metadata, name = lio.read_source(path, weight_name=weight_name)
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
            alpha = getattr(kind, "alpha", None)
            keys: list[str] = []
            for _, t in _kind_tensors(kind):
                for key in owner.get(t.untyped_storage().data_ptr(), []):
                    if key not in keys:
                        keys.append(key)
            landed.setdefault(comp, {})[mod] = {
                "kind": kind.kind_name,
                "rank": kind.rank,
                "alpha": None if alpha is None else float(alpha),
                "keys": sorted(keys),
            }
    return landed, conv.report


def _kind_tensors(kind: Any) -> list[tuple[str, Any]]:
    named = getattr(kind, "named_tensors", None)
    try:
        items = named() if callable(named) else []
        return list(items.items()) if isinstance(items, dict) else list(items)
    except Exception:  # noqa: BLE001 - key attribution is best effort, for display only
        return []


def _key_stem(keys: Sequence[str]) -> str:
    """``a.lora_down.weight``, ``a.lora_up.weight`` -> ``a.{lora_down.weight, lora_up.weight}``."""
    if not keys:
        return "-"
    if len(keys) == 1:
        return keys[0]
    prefix = os.path.commonprefix(list(keys))
    cut = prefix.rfind(".") + 1 if "." in prefix else 0
    return f"{keys[0][:cut]}{{{', '.join(k[cut:] for k in keys)}}}" if cut else ", ".join(keys)


def _skipped(report: Any) -> list[dict[str, Any]]:
    if report is None:
        return []
    items = getattr(report, "skipped", None)
    if items is None and isinstance(report, dict):
        items = report.get("skipped")
    out = []
    for s in items or []:
        get = s.get if isinstance(s, dict) else lambda k, s=s: getattr(s, k, None)
        out.append(
            {"key": get("key"), "reason": get("reason"), "component": get("component"),
             "closest": list(get("closest") or ())}
        )
    return out


def cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    from .inspection import inspect as inspect_file

    pipe = None
    if args.model:
        with console.step(f"loaded {args.model} for coverage") as st:
            pipe = load_pipeline(args.model, dtype=None, device="cpu")
            st["note"] = type(pipe).__name__
    results: list[dict[str, Any]] = []
    failed = 0
    for i, src in enumerate(args.files):
        try:
            report = inspect_file(src, model=pipe, weight_name=args.weight_name)
            data = report.to_dict()
            landed: dict[str, dict[str, Any]] = {}
            skipped: list[dict[str, Any]] = []
            landing_error = None
            if pipe is not None:
                try:
                    landed, conv_report = _landed(src, pipe, args.weight_name)
                    skipped = _skipped(conv_report)
                except LorakitError as exc:  # e.g. shapes of another family: the report says so, inspect goes on
                    landing_error = str(exc)
                    skipped = _skipped(getattr(exc, "report", None))
                data["landed"] = landed
                data["not_landed"] = skipped
                data["landing_error"] = landing_error
        except LorakitError as exc:
            if args.verbose:
                traceback.print_exc(file=console.err)
            failed += 1
            console.err.write(f"lorakit: error: {exc}\n")
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


def _print_landing(console: Console, landed: dict[str, dict[str, Any]], skipped: list[dict[str, Any]],
                   show_all: bool) -> None:
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
    elif not skipped:
        console.result("nothing lands")


# ----------------------------------------------------------------------------------------------- convert
def cmd_convert(args: argparse.Namespace, console: Console) -> int:
    try:
        from .conversion import convert
    except ImportError as exc:
        raise CliError(f"this lorakit build has no converter (lorakit.convert: {exc})") from None
    from .errors import DestinationExistsError

    with console.step(f"converted {args.file} to {args.to}"):
        try:
            report = convert(args.file, args.output, to=args.to, overwrite=args.force, family=args.family,
                             weight_name=args.weight_name)
        except DestinationExistsError as exc:
            where = str(exc).split(":")[0] or args.output
            raise DestinationExistsError(f"{where}: already exists; pass --force to overwrite it") from exc
    if args.json:
        console.result(json.dumps(report.to_dict(), indent=2))
    else:
        console.result(report.format_table())
    return 0


# ----------------------------------------------------------------------------------------------- generate
def _lora_plan(args: argparse.Namespace) -> tuple[str, list[Any]]:
    from .prompt import plan_loras

    dirs = list(args.lora_dir or [])
    env = os.environ.get("LORAKIT_LORA_DIR")
    if env and not dirs:
        dirs = [d for d in env.split(os.pathsep) if d]
    for d in dirs:
        if not Path(d).is_dir():
            raise SourceNotFoundError(f"--lora-dir {d}: no such folder")
    return plan_loras(args.prompt or "", args.lora or [], dirs, negative_prompt=getattr(args, "negative_prompt", None))


def cmd_generate(args: argparse.Namespace, console: Console) -> int:
    import torch

    if args.steps < 1 or args.num_images < 1:
        raise CliError(f"--steps and --num-images must be at least 1 (got {args.steps} and {args.num_images})")
    prompt, specs = _lora_plan(args)
    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise CliError(f"-o {args.output}: expected an image file name (.png, .jpg, .webp)")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    t_start = time.perf_counter()
    with console.step(f"loaded {args.model}") as st:
        pipe = load_pipeline(args.model, dtype=dtype, device=device)
        st["note"] = f"{type(pipe).__name__} ({family_of(pipe)}) on {device}, {str(dtype).replace('torch.', '')}"
    attach(pipe)
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
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
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
            "generator": generator,
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
def cmd_bake(args: argparse.Namespace, console: Console) -> int:
    import torch

    from .prompt import plan_loras

    if not args.lora:
        raise CliError("bake: give at least one --lora FILE[:WEIGHT]")
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise CliError(f"-o {out}: already exists and is not empty; pass --force to write into it")
    _, specs = plan_loras("", args.lora, [])
    device = resolve_device(args.device)
    dtype = saved_dtype(args.model) if args.dtype is None else resolve_dtype(args.dtype, device)
    with console.step(f"loaded {args.model}") as st:
        pipe = load_pipeline(args.model, dtype=dtype, device=device)
        how = "as saved" if args.dtype is None else "--dtype"
        st["note"] = f"{type(pipe).__name__} ({family_of(pipe)}), {str(dtype or 'default dtype').replace('torch.', '')} ({how})"
    comps = module_components(pipe)
    keys_before = {name: list(m.state_dict().keys()) for name, m in comps.items()}
    attach(pipe)
    load_loras(pipe, specs, console)
    with console.step("fused the LoRAs into the weights"):
        pipe.fuse_lora(adapter_names=[s.name for s in specs])
    fused = {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in comps.items()}
    with console.step("unloaded the adapters (the fused weights stay)"):
        pipe.unload_lora_weights()
    for name, m in comps.items():
        sd = m.state_dict()
        if list(sd.keys()) != keys_before[name]:
            extra = sorted(set(sd) - set(keys_before[name]))
            raise CliError(f"bake: {name} has extra state_dict keys after unloading ({extra[:3]}); not saving")
        for k, v in sd.items():
            if not torch.equal(v, fused[name][k]):
                raise CliError(f"bake: {name}.{k} changed when the adapters were unloaded; not saving")
    del fused
    with console.step(f"saved the baked pipeline to {out}"):
        out.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(str(out), safe_serialization=True)
    console.result(f"wrote {out} ({', '.join(s.name + ':' + format(s.unet, 'g') for s in specs)} fused into "
                   f"{type(pipe).__name__}); load it with DiffusionPipeline.from_pretrained({str(out)!r})")
    return 0


# ----------------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from .demo import run_demo

    return run_demo(Path(args.output), console, family=args.family, steps=args.steps)


# ----------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lorakit`` command."""
    from . import __version__

    def verbosity_options(defaults: bool) -> argparse.ArgumentParser:
        # Sub-commands must not reset what `lorakit -v inspect` set: their defaults are SUPPRESS.
        p = argparse.ArgumentParser(add_help=False)
        p.add_argument("-v", "--verbose", action="count", default=0 if defaults else argparse.SUPPRESS,
                       help="more logging (-vv: debug); errors print a full traceback")
        p.add_argument("-q", "--quiet", action="store_true", default=False if defaults else argparse.SUPPRESS,
                       help="print only results and errors, no progress bars")
        return p

    top = verbosity_options(True)
    common = verbosity_options(False)

    parser = argparse.ArgumentParser(
        prog="lorakit",
        description="Load, mix, fuse and save LoRA / LyCORIS adapters for diffusers pipelines, without PEFT.",
        epilog="Try `lorakit demo` (no download). Docs: docs/cli.md",
        parents=[top],
    )
    parser.add_argument("--version", action="version", version=f"lorakit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    model_help = ("diffusers pipeline folder or Hub id (DiffusionPipeline.from_pretrained); tiny:sd1|sd2|sdxl|sd3|amused "
                  "builds a tiny seeded test pipeline")

    p = sub.add_parser("inspect", parents=[common], help="what is in a LoRA file (format, kinds, ranks, alphas, family)",
                       description="Describe LoRA files: format, adapter kinds, guessed base family, components, "
                       "ranks, alphas (and where they come from), dtypes, size, kohya/diffusers metadata. With --model "
                       "also which modules the keys land on and which keys do not land.")
    p.add_argument("files", nargs="+", metavar="FILE", help="LoRA file(s) (or folder / Hub id with --weight-name)")
    p.add_argument("--json", action="store_true", help="print a JSON list (one object per file)")
    p.add_argument("--model", metavar="PATH_OR_ID", help=model_help + "; adds coverage")
    p.add_argument("--modules", action="store_true", help="with --model: list every landed module and skipped key")
    p.add_argument("--weight-name", help="the file inside a folder / Hub repository")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert", parents=[common], help="rewrite a LoRA file as diffusers, PEFT or kohya",
                       description="Convert a LoRA file to another key layout and write safetensors with metadata.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--to", required=True, choices=("diffusers", "peft", "kohya"), help="target layout")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output .safetensors file (or folder)")
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    p.add_argument("--family", choices=("sd1", "sd2", "sdxl", "sd3", "amused"),
                   help="base family, when the layout depends on it (guessed otherwise)")
    p.add_argument("--weight-name", help="the file inside a folder / Hub repository")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_convert)

    def runtime(p: argparse.ArgumentParser, dtype_default: str | None) -> None:
        p.add_argument("--model", required=True, metavar="PATH_OR_ID", help=model_help)
        p.add_argument("--lora", action="append", metavar="FILE[:WEIGHT]",
                       help="a LoRA file, weight 1.0 unless given (repeatable)")
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps (default: auto)")
        p.add_argument("--dtype", default=dtype_default, choices=("auto", "float32", "float16", "bfloat16"),
                       help="model dtype (default: " + (dtype_default or "as saved") + "; auto = float16 on GPU, "
                       "float32 on CPU)")

    p = sub.add_parser("generate", parents=[common], help="generate images with LoRAs (A1111 <lora:name:weight> tags)",
                       description="Load a pipeline, attach lorakit, load the LoRAs given with --lora and as "
                       "<lora:name:weight> / <lora:name:te:unet> tags in the prompt (resolved against --lora-dir and "
                       "the --lora files by file stem, then stripped from the prompt), generate and write the images.")
    runtime(p, "auto")
    p.add_argument("--prompt", required=True, help='e.g. "a cat <lora:style:0.8>"')
    p.add_argument("--negative-prompt", help="negative prompt (no LoRA tags)")
    p.add_argument("--lora-dir", action="append", metavar="DIR",
                   help="folder the prompt's <lora:NAME> tags resolve in (repeatable; default $LORAKIT_LORA_DIR)")
    p.add_argument("--steps", type=int, default=30, help="inference steps (default 30)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=parse_size, metavar="WxH", help="image size, e.g. 768x512 (default: the model's)")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    p.add_argument("--fuse", action="store_true", help="fuse the LoRAs into the weights before generating (faster)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png",
                   help="image file; several images are written as OUT-1.png, OUT-2.png, …")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("bake", parents=[common], help="fuse LoRAs and save a plain diffusers pipeline folder",
                       description="Fuse LoRAs into a pipeline and save it with save_pretrained: the folder loads "
                       "with plain diffusers, without lorakit.")
    runtime(p, None)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output pipeline folder")
    p.add_argument("--force", action="store_true", help="write into a non-empty DIR")
    p.set_defaults(func=cmd_bake)

    p = sub.add_parser("demo", parents=[common], help="the offline end-to-end demo on a tiny model (no download)",
                       description="Build a tiny seeded pipeline, write a kohya-layout LoRA, inspect it, load it, "
                       "generate base / LoRA / fused images into one labelled PNG grid and check that unfuse restores "
                       "the weights bit for bit.")
    p.add_argument("-o", "--output", default=".", metavar="DIR", help="folder for lorakit-demo.png and the LoRA file "
                   "(default: the current folder)")
    p.add_argument("--family", default="sd1", choices=("sd1", "sd2", "sdxl", "sd3"), help="tiny model family")
    p.add_argument("--steps", type=int, default=4, help="inference steps (default 4)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 bad arguments, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    verbosity = -1 if args.quiet else args.verbose
    console = Console(quiet=args.quiet, verbose=args.verbose)
    console.json = bool(getattr(args, "json", False))
    # a plain `inspect` never imports diffusers: do not import it just to set its verbosity
    libraries = args.command != "inspect" or bool(args.model)
    try:
        with logging_for(verbosity, libraries):
            return int(args.func(args, console) or 0)
    except BrokenPipeError:  # `lorakit inspect --json x | head`: stop quietly, as Unix tools do
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep the interpreter from failing at exit flush
        except OSError:
            pass
        return 141
    except KeyboardInterrupt:
        console.err.write("lorakit: interrupted\n")
        return 130
    except Exception as exc:  # noqa: BLE001 - every error becomes one line (a traceback with -v)
        if args.verbose:
            traceback.print_exc(file=console.err)
        console.err.write(f"lorakit: error: {_one_line(exc)}\n")
        return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, KeyError) and not isinstance(exc, LorakitError):
        text = f"missing key {text}"
    first = text.splitlines()[0] if text else ""
    if not isinstance(exc, LorakitError):
        first = f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__
    return first + (" (run with -v for details)" if not isinstance(exc, LorakitError) else "")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
