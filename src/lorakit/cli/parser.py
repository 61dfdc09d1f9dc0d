"""The ``lorakit`` command line: subcommands, options and their help. Choice lists come from
:mod:`lorakit.families` (``--family``, ``tiny:FAMILY``) and :mod:`lorakit.formats` (``--to``)."""

from __future__ import annotations

import argparse

from .. import __version__, families, formats
from .session import DTYPE_CHOICES, TINY_FAMILIES, TINY_PREFIX

__all__ = ["build_parser", "parse_size"]


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


def _verbosity_options(defaults: bool) -> argparse.ArgumentParser:
    # Sub-commands must not reset what `lorakit -v inspect` set: their defaults are SUPPRESS.
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="count", default=0 if defaults else argparse.SUPPRESS,
                   help="more logging (-vv: debug); errors print a full traceback")
    p.add_argument("-q", "--quiet", action="store_true", default=False if defaults else argparse.SUPPRESS,
                   help="print only results and errors, no progress bars")
    return p


def _runtime_options(p: argparse.ArgumentParser, model_help: str, dtype_default: str | None) -> None:
    p.add_argument("--model", required=True, metavar="PATH_OR_ID", help=model_help)
    p.add_argument("--lora", action="append", metavar="FILE[:WEIGHT]",
                   help="a LoRA file, weight 1.0 unless given (repeatable)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps (default: auto)")
    p.add_argument("--dtype", default=dtype_default, choices=DTYPE_CHOICES,
                   help="model dtype (default: " + (dtype_default or "as saved") + "; auto = float16 on GPU, "
                   "float32 on CPU)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lorakit`` command; each subcommand sets ``command`` to its name."""
    common = _verbosity_options(False)
    parser = argparse.ArgumentParser(
        prog="lorakit",
        description="Load, mix, fuse and save LoRA / LyCORIS adapters for diffusers pipelines, without PEFT.",
        epilog="Try `lorakit demo` (no download). Docs: docs/cli.md",
        parents=[_verbosity_options(True)],
    )
    parser.add_argument("--version", action="version", version=f"lorakit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    model_help = (f"diffusers pipeline folder or Hub id (DiffusionPipeline.from_pretrained); "
                  f"{TINY_PREFIX}{'|'.join(TINY_FAMILIES)} builds a tiny seeded test pipeline")

    p = sub.add_parser("inspect", parents=[common], help="what is in a LoRA file (format, kinds, ranks, alphas, family)",
                       description="Describe LoRA files: format, adapter kinds, detected base family, components, "
                       "ranks, alphas (and where they come from), dtypes, size, kohya/diffusers metadata, trigger words, "
                       "the file's sha256 / AutoV2 / A1111 LoRA hash. With --model also which modules the keys land on "
                       "and which keys do not land. A full model checkpoint is named as such (exit status 1).")
    p.add_argument("files", nargs="+", metavar="FILE", help="LoRA file(s) (or folder / Hub id with --weight-name)")
    p.add_argument("--json", action="store_true", help="print a JSON list (one object per file)")
    p.add_argument("--model", metavar="PATH_OR_ID", help=model_help + "; adds coverage")
    p.add_argument("--modules", action="store_true", help="with --model: list every landed module and skipped key")
    p.add_argument("--weight-name", help="the file inside a folder / Hub repository")
    p.add_argument("--no-hashes", action="store_true", help="skip the file hashes (they read every byte)")

    p = sub.add_parser("convert", parents=[common], help=f"rewrite a LoRA file as {', '.join(formats.LAYOUTS)}",
                       description="Convert a LoRA file to another key layout and write safetensors, with its header "
                       "(kohya ss_*, modelspec.*) carried over and its origin recorded.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--to", required=True, choices=formats.LAYOUTS, help="target layout")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output .safetensors file, or a folder (peft: one sub-folder per component)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files (adapter_config.json too)")
    p.add_argument("--family", choices=tuple(families.FAMILIES),
                   help="base family, when the layout depends on it (detected otherwise)")
    p.add_argument("--model", metavar="PATH_OR_ID", help=model_help + "; resolves module names against it (for "
                   "models whose sizes differ from the family's reference model)")
    p.add_argument("--component", metavar="NAME", help="convert only this component (e.g. unet, text_encoder)")
    p.add_argument("--weight-name", help="the file inside a folder / Hub repository")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("list", parents=[common], help="the LoRA files under a folder, as <lora:name> tags see them",
                       description="List the LoRA files under folders (recursively, header only): the name "
                       "<lora:name> resolves them by, family, kinds, ranks, size and trigger words.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="LoRA folder(s), as given to generate --lora-dir")
    p.add_argument("--json", action="store_true", help="print a JSON list (one object per file)")
    p.add_argument("--hashes", action="store_true", help="also compute each file's sha256, AutoV2 and A1111 LoRA "
                   "hash (reads every byte)")

    p = sub.add_parser("generate", parents=[common], help="generate images with LoRAs (A1111 <lora:name:weight> tags)",
                       description="Load a pipeline, attach lorakit, load the LoRAs given with --lora and as "
                       "<lora:name:weight> / <lora:name:te:unet> tags in the prompt (resolved against --lora-dir and "
                       "the --lora files by file stem, then stripped from the prompt), generate and write the images.")
    _runtime_options(p, model_help, "auto")
    p.add_argument("--prompt", required=True, help='e.g. "a cat <lora:style:0.8>"')
    p.add_argument("--negative-prompt", help="negative prompt (no LoRA tags)")
    p.add_argument("--lora-dir", action="append", metavar="DIR",
                   help="folder the prompt's <lora:NAME> tags resolve in (repeatable; default $LORAKIT_LORA_DIR)")
    p.add_argument("--steps", type=int, default=30, help="inference steps (default 30)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the first image (default 0); image i of a "
                   "batch gets seed + i, as in A1111")
    p.add_argument("--size", type=parse_size, metavar="WxH", help="image size, e.g. 768x512 (default: the model's)")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    p.add_argument("--fuse", action="store_true", help="fuse the LoRAs into the weights before generating (faster)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's); on a busy machine 1 can be much faster for small models")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png|DIR/",
                   help="image file (several images: OUT-1.png, OUT-2.png, …), or a folder (ends in /, exists, or "
                   "has no suffix) that gets lorakit-SEED.png per image")

    p = sub.add_parser("bake", parents=[common], help="fuse LoRAs and save a plain diffusers pipeline folder",
                       description="Fuse LoRAs into a pipeline and save it with save_pretrained: the folder loads "
                       "with plain diffusers, without lorakit.")
    _runtime_options(p, model_help, None)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output pipeline folder")
    p.add_argument("--force", action="store_true", help="write into a non-empty DIR")

    p = sub.add_parser("demo", parents=[common], help="the offline end-to-end demo on a tiny model (no download)",
                       description="Build a tiny seeded pipeline, write a kohya-layout LoRA, inspect it, load it, "
                       "generate base / LoRA / fused images into one labelled PNG grid and check that unfuse restores "
                       "the weights bit for bit.")
    p.add_argument("-o", "--output", default=".", metavar="DIR", help="folder for lorakit-demo.png and the LoRA file "
                   "(default: the current folder)")
    p.add_argument("--family", default=TINY_FAMILIES[0], choices=TINY_FAMILIES, help="tiny model family")
    p.add_argument("--steps", type=int, default=4, help="inference steps (default 4)")
    return parser
