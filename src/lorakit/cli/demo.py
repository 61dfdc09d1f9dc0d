"""``lorakit demo``: the whole path on a tiny seeded pipeline, offline, in seconds.

Steps: build a tiny pipeline from configs (:mod:`lorakit.tiny`); build seeded random canonical adapters (a LoRA with
LoCon convs, and a LoHa) and write them in kohya layout through ``formats.from_canonical`` (``lora_unet_*`` /
``lora_te*_*`` keys with ``.alpha``); inspect the LoRA against the pipeline; attach lorakit, load the LoRA, then the LoHa, mix them with
``set_adapters``, fuse, unfuse, unload; write base / LoRA / LoRA+LoHa / fused / after-unload images into one labelled
PNG grid; and check the engine's promises:

* the LoRA changes the output (no silent no-op), and the LoHa changes it further;
* fused and unfused outputs agree;
* ``unfuse_lora`` restores every weight of every component bit for bit;
* after ``unload_lora_weights`` the output is bit-identical to the base.

The tiny model's weights are random, so its images are noise by design; the demo shows the mechanics and timings.
Library code must not print, so the printing lives in :mod:`lorakit.cli` only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from .. import families, formats
from ..inspection import inspect
from ..io import save_safetensors
from ..kinds import AdapterKind, LoHa, LoRA
from ..pipelines import attach, load_report
from ..tiny import tiny_pipeline
from .console import Console, report_lines
from .session import module_components

__all__ = ["DEMO_IMAGE", "DEMO_LOHA", "DEMO_LORA", "demo_adapters", "difference_images", "make_grid", "run_demo",
           "write_demo_file"]

#: file names the demo writes into its output folder (listed in .gitignore)
DEMO_IMAGE = "lorakit-demo.png"
DEMO_LORA = "lorakit-demo-lora.safetensors"
DEMO_LOHA = "lorakit-demo-loha.safetensors"
_PROMPT = "a tiny cat in the snow"
ALGOS = ("lora", "loha")


def _targets(component: str, model: nn.Module) -> list[tuple[str, nn.Linear | nn.Conv2d]]:
    """The modules kohya's LoRA / LoCon networks train: attention, feed-forward, projections, resnet convs."""
    out: list[tuple[str, nn.Linear | nn.Conv2d]] = []
    for path, mod in model.named_modules():
        if not isinstance(mod, (nn.Linear, nn.Conv2d)):
            continue
        if component.startswith("text_encoder"):
            keep = ".self_attn." in path or ".mlp." in path
        else:
            keep = (
                ".attn" in path
                or ".ff." in path
                or path.endswith(("proj_in", "proj_out"))
                or (".resnets." in path and path.endswith(("conv1", "conv2")))
            )
        if keep:
            out.append((path, mod))
    return out


def demo_adapters(
    pipe: Any, family: str, *, algo: str = "lora", rank: int = 4, alpha: float = 2.0, seed: int = 1234,
    strength: float = 1.0,
) -> dict[str, dict[str, AdapterKind]]:
    """Seeded random canonical adapters for ``pipe``: ``{component: {module path: kind}}``.

    ``algo="lora"``: a :class:`~lorakit.kinds.LoRA` on the denoiser's attention / feed-forward / projection / resnet
    modules and the text encoders' attention and MLP (convs get a k×k down and a 1×1 up: LoCon). ``algo="loha"``: a
    :class:`~lorakit.kinds.LoHa` on the same denoiser modules (convs flattened to ``(out, in·kh·kw)``), no text
    encoders.
    """
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {', '.join(ALGOS)}, not {algo!r}")
    fam = families.get(family)
    comps = (fam.denoiser, *fam.text_encoders) if algo == "lora" else (fam.denoiser,)
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    out: dict[str, dict[str, AdapterKind]] = {}
    for comp in comps:
        model = getattr(pipe, comp, None)
        if not isinstance(model, nn.Module):
            continue
        mapping: dict[str, AdapterKind] = {}
        for path, mod in _targets(comp, model):
            # LoCon: a conv gets a k×k down and a 1×1 up; LoHa flattens it to (out, in·kh·kw)
            if isinstance(mod, nn.Conv2d):
                kh, kw = mod.kernel_size
                n_in, n_out = mod.in_channels * kh * kw, mod.out_channels
                down_shape: tuple[int, ...] = (rank, mod.in_channels, kh, kw)
                up_shape: tuple[int, ...] = (n_out, rank, 1, 1)
            else:
                n_in, n_out = mod.in_features, mod.out_features
                down_shape, up_shape = (rank, n_in), (n_out, rank)
            if algo == "loha":
                # ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) · alpha/rank
                w1a = randn(n_out, rank) * strength
                w1b = randn(rank, n_in) / n_in**0.5
                w2a = randn(n_out, rank)
                w2b = randn(rank, n_in) / rank**0.5
                mapping[path] = LoHa(w1a, w1b, w2a, w2b, alpha=alpha)
            else:
                down = randn(*down_shape) / n_in**0.5
                up = randn(*up_shape) * strength / rank**0.5
                mapping[path] = LoRA(down, up, alpha=alpha)
        out[comp] = mapping
    return out


def write_demo_file(
    pipe: Any, path: Path, family: str, *, algo: str = "lora", rank: int = 4, alpha: float = 2.0, seed: int = 1234,
    strength: float = 1.0,
) -> dict[str, int]:
    """Write :func:`demo_adapters` in kohya layout (what most downloaded LoRAs look like) through
    ``formats.from_canonical``, with kohya's training header fields. Returns ``{component: modules written}``."""
    adapters = demo_adapters(pipe, family, algo=algo, rank=rank, alpha=alpha, seed=seed, strength=strength)
    state_dict, metadata = formats.from_canonical(adapters, "kohya", family=family)
    args = {"conv_dim": str(rank), "conv_alpha": f"{alpha:g}", **({"algo": algo} if algo != "lora" else {})}
    header: dict[str, Any] = {
        **metadata,
        "ss_network_args": args,
        "ss_output_name": path.stem,
        "ss_training_comment": "seeded random weights written by `lorakit demo`",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(state_dict, path, header)
    return {c: len(m) for c, m in adapters.items()}


def _to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype("uint8"))


def difference_images(images: list[np.ndarray], base: np.ndarray) -> tuple[list[Image.Image], float]:
    """``|image - base|`` per image (channel mean), all scaled by one gain so the largest difference is white; black
    means identical. Returns the images and the gain."""
    diffs = [np.abs(im - base).mean(axis=-1) for im in images]
    peak = max(float(d.max()) for d in diffs)
    gain = 1.0 / peak if peak > 0 else 1.0
    return [_to_pil(np.repeat((d * gain)[..., None], 3, axis=-1)) for d in diffs], gain


def make_grid(images: list[tuple[str, Image.Image]], footer: str, *, scale: int = 2,
              diffs: list[tuple[str, Image.Image]] | None = None) -> Image.Image:
    """Tiles side by side (nearest-neighbour upscaled ×``scale``), a label above each, an optional second row (the
    differences from the base) and a footer line."""
    font = ImageFont.load_default()
    rows = [images] + ([diffs] if diffs else [])
    tiles = [[im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) for _, im in row]
             for row in rows]
    pad, label_h, footer_h = 8, 16, 18
    tw = max(t.width for row in tiles for t in row)
    th = max(t.height for row in tiles for t in row)
    width = pad + max(len(row) for row in tiles) * (tw + pad)
    height = pad + len(rows) * (label_h + th + pad) + footer_h
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for r, (row, row_tiles) in enumerate(zip(rows, tiles)):
        y = pad + r * (label_h + th + pad)
        for i, ((label, _), tile) in enumerate(zip(row, row_tiles)):
            x = pad + i * (tw + pad)
            draw.text((x, y), label, fill="black", font=font)
            grid.paste(tile, (x, y + label_h))
    draw.text((pad, pad + len(rows) * (label_h + th + pad)), footer, fill=(90, 90, 90), font=font)
    return grid


def _snapshot(pipe: Any) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in
            module_components(pipe).items()}


def _same_weights(pipe: Any, snap: dict[str, dict[str, torch.Tensor]]) -> tuple[bool, int, list[str]]:
    bad: list[str] = []
    n = 0
    for name, m in module_components(pipe).items():
        sd = m.state_dict()
        if list(sd) != list(snap[name]):
            bad.append(f"{name} (state_dict keys changed)")
            continue
        for k, v in sd.items():
            n += 1
            if v.dtype != snap[name][k].dtype or not torch.equal(v, snap[name][k]):
                bad.append(f"{name}.{k}")
    return not bad, n, bad


def _print_report(console: Console, pipe: Any, name: str) -> None:
    for line in report_lines(load_report(pipe, name)):
        console.info(line)


def run_demo(out_dir: Path, console: Console, *, family: str = "sd1", steps: int = 4, size: int = 64) -> int:
    """Run the demo, writing :data:`DEMO_IMAGE`, :data:`DEMO_LORA` and :data:`DEMO_LOHA` into ``out_dir``.

    Returns:
        The exit status: 0 when every check passed, 1 otherwise.
    """
    t_all = time.perf_counter()
    if family == "sd3":
        size = min(size, 32)  # the tiny SD3 transformer's pos_embed_max_size is 16 latent pixels
    # Tiny tensors gain nothing from intra-op threads, and on a busy machine the thread hand-offs cost more than the
    # maths (measured: 7 s with 1 thread vs 60 s with 2 on a loaded 2-core box), so the demo runs single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out_dir, console, family, steps, size, t_all)
    finally:
        torch.set_num_threads(threads)


def _run(out_dir: Path, console: Console, family: str, steps: int, size: int, t_all: float) -> int:
    console.info(f"lorakit demo: tiny {family} pipeline, {steps} steps, {size}x{size}, CPU (1 thread), no download")
    shown = families.get(family).display
    out_dir.mkdir(parents=True, exist_ok=True)
    lora_path = out_dir / DEMO_LORA
    loha_path = out_dir / DEMO_LOHA
    image_path = out_dir / DEMO_IMAGE

    with console.step(f"built a tiny seeded {family} pipeline from configs") as st:
        pipe = tiny_pipeline(family, with_t5=False) if family == "sd3" else tiny_pipeline(family)
        n_params = sum(p.numel() for m in module_components(pipe).values() for p in m.parameters())
        st["note"] = f"{type(pipe).__name__}, {n_params:,} parameters"

    with console.step(f"wrote a kohya-layout LoRA to {lora_path}") as st:
        counts = write_demo_file(pipe, lora_path, family)
        st["note"] = ", ".join(f"{c}: {n} modules" for c, n in counts.items()) + ", rank 4, alpha 2"
    with console.step(f"wrote a LyCORIS LoHa (kohya layout) to {loha_path}") as st:
        counts = write_demo_file(pipe, loha_path, family, algo="loha", seed=4321, rank=2, alpha=1.0)
        st["note"] = ", ".join(f"{c}: {n} modules" for c, n in counts.items()) + ", rank 2, alpha 1"

    with console.step(f"inspected {lora_path.name} (header only) against the pipeline"):
        report = inspect(str(lora_path), model=pipe)
    for line in report.format_table().splitlines():
        console.info("    " + line)
    if report.warnings:
        console.info(
            f"    (expected: the tiny model has {shown}'s structure at toy widths, so a LoRA made for it "
            f"does not fit a real {shown} model; it fits the tiny pipeline, see coverage)"
        )

    def generate() -> np.ndarray:
        gen = torch.Generator().manual_seed(0)
        kwargs: dict[str, Any] = dict(num_inference_steps=steps, generator=gen, output_type="np",
                                      height=size, width=size)
        if family in ("sd3", "flux"):  # the tiny T5 would pad the prompt to 256 (SD3) / 512 (Flux) tokens
            kwargs["max_sequence_length"] = 8
        return pipe(_PROMPT, **kwargs).images[0]

    with console.step("generated the base image"):
        base = generate()
    base_weights = _snapshot(pipe)

    with console.step("attached lorakit and loaded the LoRA (unfused: forward hooks)") as st:
        attach(pipe)
        pipe.load_lora_weights(str(lora_path), adapter_name="style")
        st["note"] = f"adapters {pipe.get_list_adapters()}"
    _print_report(console, pipe, "style")
    with console.step("generated with the LoRA"):
        lora = generate()

    with console.step("loaded the LoHa and mixed both: set_adapters(['style', 'texture'], [1.0, 0.7])"):
        pipe.load_lora_weights(str(loha_path), adapter_name="texture")
        pipe.set_adapters(["style", "texture"], adapter_weights=[1.0, 0.7])
    _print_report(console, pipe, "texture")
    with console.step("generated with LoRA + LoHa (unfused)"):
        mixed = generate()
    with console.step("fused both into the weights"):
        pipe.fuse_lora(adapter_names=["style", "texture"])
    with console.step("generated with LoRA + LoHa (fused)"):
        fused = generate()
    with console.step("unfused (original weights put back)"):
        pipe.unfuse_lora()
    restored, n_tensors, bad = _same_weights(pipe, base_weights)
    with console.step("unloaded both adapters"):
        pipe.unload_lora_weights()
    with console.step("generated after unloading"):
        after = generate()

    moved = float(np.abs(lora - base).max())
    moved_mix = float(np.abs(mixed - lora).max())
    fused_gap = float(np.abs(fused - mixed).max())
    same_after = bool(np.array_equal(after, base))
    checks = [
        (moved > 1e-3, f"the LoRA changes the image (max |LoRA - base| = {moved:.3f})"),
        (moved_mix > 1e-3, f"the LoHa changes it further (max |mixed - LoRA| = {moved_mix:.3f})"),
        (fused_gap < 1e-3, f"fused and unfused images agree (max |fused - unfused| = {fused_gap:.1e})"),
        (restored, f"unfuse restored all {n_tensors} weight tensors bit for bit"
         + (f" (differs: {', '.join(bad[:3])})" if bad else "")),
        (same_after, "after unload the image is bit-identical to the base"),
    ]

    with console.step(f"wrote the image grid to {image_path}"):
        panels = [("base", base), ("LoRA", lora), ("+ LoHa 0.7", mixed), ("+ LoHa, fused", fused),
                  ("after unload", after)]
        diff_images, gain = difference_images([im for _, im in panels[1:]], base)
        grid = make_grid(
            [(label, _to_pil(im)) for label, im in panels],
            f"tiny random {family} model: noise by design | seed 0, {steps} steps, \"{_PROMPT}\" | row 2: "
            f"|image - base| x{gain:.1f}, black = identical",
            diffs=[("difference:", _to_pil(np.zeros_like(base)))]
            + [(f"|{label.lstrip('+ ')} - base|", im) for (label, _), im in zip(panels[1:], diff_images)],
        )
        grid.save(image_path, optimize=True)

    console.info("")
    for ok, text in checks:
        console.result(f"{'PASS' if ok else 'FAIL'}  {text}")
    console.info("")
    console.info(
        "The tiny model has random weights, so its images are noise by design: the demo shows the mechanics "
        "(kohya LoRA + LyCORIS LoHa -> inspect -> load -> mix -> fuse -> exact unfuse -> unload) and their timings."
    )
    console.info(
        "Real use: lorakit generate --model stabilityai/stable-diffusion-xl-base-1.0 --lora-dir ./loras "
        "--prompt \"a cat <lora:style:0.8>\" -o cat.png   (see docs/cli.md)"
    )
    failed = [t for ok, t in checks if not ok]
    console.result(
        f"demo {'passed' if not failed else 'FAILED'} in {time.perf_counter() - t_all:.1f} s; wrote {image_path}, "
        f"{lora_path} and {loha_path}"
    )
    return 0 if not failed else 1
