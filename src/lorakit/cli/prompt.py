"""A1111-style ``<lora:name:weight>`` prompt tags: parse them, strip them, resolve them to files.

Syntax accepted (``lyco`` is accepted as an alias of ``lora``, as AUTOMATIC1111 does):

============================================  =============================================================
``<lora:name>``                               weight 1.0 for the text encoders and the denoiser
``<lora:name:0.8>``                           one weight for both (negative and ``.5`` decimals allowed)
``<lora:name:0.5:1.0>``                       A1111 positional order: text-encoder weight, then denoiser weight
``<lora:name:unet=1.0:te=0.5>``               named weights, any order (``unet`` = the denoiser, also
                                              SD3's / aMUSEd's ``transformer``)
``<lora:sub/dir/name:0.7>``                   a name relative to the LoRA folder
============================================  =============================================================

A weight given only for one side leaves the other at the single / first weight (``<lora:x:0.8:unet=0.3>`` gives
te 0.8 and unet 0.3; ``<lora:x:unet=0.3>`` gives te 1.0 and unet 0.3). Anything else inside a tag (a third
number, ``dyn=``, block-weight presets, a non-number, an empty name, an unclosed ``<lora:``) raises
:class:`PromptTagError` naming the tag, rather than being ignored.

Example:
    >>> clean, tags = parse_prompt("a cat, <lora:style:0.8> in the snow")
    >>> clean, tags[0].name, tags[0].unet, tags[0].te
    ('a cat, in the snow', 'style', 0.8, 0.8)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import PromptTagError, SourceNotFoundError, did_you_mean, summarize

__all__ = [
    "LORA_EXTENSIONS",
    "LoraTag",
    "PromptTagError",
    "LoraSpec",
    "parse_prompt",
    "merge_tags",
    "plan_loras",
    "strip_tags",
    "parse_weight",
    "split_file_weight",
    "find_lora",
    "list_loras",
    "lora_tag_name",
    "tag_name_in",
]

#: file extensions a LoRA name resolves to, in order of preference (safetensors first: no pickle)
LORA_EXTENSIONS: tuple[str, ...] = (".safetensors", ".pt", ".ckpt", ".bin", ".pth")

_TAG = re.compile(r"<\s*(lora|lyco)\s*:([^<>]*)>", re.IGNORECASE)
_OPEN = re.compile(r"<\s*(lora|lyco)\s*:", re.IGNORECASE)
_NAMED_KEYS = {"unet": "unet", "transformer": "unet", "denoiser": "unet", "te": "te", "tenc": "te", "text_encoder": "te"}


@dataclass(frozen=True, slots=True)
class LoraTag:
    """One ``<lora:...>`` tag.

    Attributes:
        name: the LoRA name (a file stem, or a path relative to the LoRA folder, without extension).
        te: weight for the text encoders.
        unet: weight for the denoiser (UNet or transformer).
        text: the tag as written in the prompt.
    """

    name: str
    te: float
    unet: float
    text: str

    @property
    def uniform(self) -> bool:
        """True when text encoders and denoiser share one weight."""
        return self.te == self.unet


def parse_weight(text: str, where: str) -> float:
    """A finite float from ``text`` (``"0.8"``, ``"-.5"``, ``"1e-1"``), else :class:`PromptTagError`."""
    s = text.strip()
    try:
        value = float(s)
    except ValueError:
        raise PromptTagError(f"{where}: weight {s!r} is not a number") from None
    if not math.isfinite(value):
        raise PromptTagError(f"{where}: weight {s!r} is not a finite number")
    return value


def _parse_tag(body: str, text: str) -> LoraTag:
    parts = [p.strip() for p in body.split(":")]
    name = parts[0]
    if not name:
        raise PromptTagError(f"{text}: the LoRA name is empty (expected <lora:name:weight>)")
    positional: list[float] = []
    named: dict[str, float] = {}
    for part in parts[1:]:
        if "=" in part:
            key, _, value = part.partition("=")
            key = key.strip().lower()
            side = _NAMED_KEYS.get(key)
            if side is None:
                raise PromptTagError(
                    f"{text}: unsupported option {key!r} (supported: unet=, te=; dyn= and block weights are not)"
                )
            if side in named:
                raise PromptTagError(f"{text}: {key}= given twice")
            named[side] = parse_weight(value, text)
        else:
            if part == "":
                raise PromptTagError(f"{text}: empty field (expected <lora:name:weight>)")
            if named:
                raise PromptTagError(f"{text}: a plain weight after a named one (write te=/unet= for both)")
            positional.append(parse_weight(part, text))
    if len(positional) > 2:
        raise PromptTagError(
            f"{text}: too many weights ({len(positional)}; at most text-encoder and denoiser, dyn is not supported)"
        )
    te = positional[0] if positional else 1.0
    unet = positional[1] if len(positional) == 2 else te
    te = named.get("te", te)
    unet = named.get("unet", unet)
    return LoraTag(name=name, te=te, unet=unet, text=text)


def strip_tags(prompt: str) -> str:
    """Remove every ``<lora:...>`` tag and tidy the whitespace and commas the removal leaves behind."""
    out = _TAG.sub(" ", prompt)
    out = re.sub(r"[ \t]{2,}", " ", out)
    out = re.sub(r"[ \t]*\n[ \t]*", "\n", out)
    out = re.sub(r"[ \t]+([,.;])", r"\1", out)
    out = re.sub(r",(\s*,)+", ",", out)
    return out.strip().strip(",").strip()


def parse_prompt(prompt: str) -> tuple[str, list[LoraTag]]:
    """Split a prompt into the prompt text without tags and its ``<lora:...>`` tags.

    Args:
        prompt: the prompt as typed, e.g. ``"a cat <lora:style:0.8>, <lora:detail:te=0:unet=0.5>"``.

    Returns:
        ``(clean_prompt, tags)``: tags in prompt order. The same name may appear several times here; deciding what
        that means is :func:`merge_tags`' job.

    Raises:
        PromptTagError: a malformed tag (empty name, non-numeric or non-finite weight, unknown option, too many
            fields, an unclosed ``<lora:``).
    """
    tags = [_parse_tag(m.group(2), m.group(0)) for m in _TAG.finditer(prompt)]
    rest = _TAG.sub("", prompt)
    bad = _OPEN.search(rest)
    if bad:
        snippet = rest[bad.start() : bad.start() + 40]
        raise PromptTagError(f"unclosed or malformed LoRA tag {snippet!r} in the prompt (expected <lora:name:weight>)")
    return strip_tags(prompt), tags


def merge_tags(tags: Iterable[LoraTag]) -> list[LoraTag]:
    """One tag per name: identical repeats collapse, repeats with different weights raise.

    A1111 applies a repeated tag twice with the last weight, which is rarely what was meant; lorakit refuses instead.
    """
    seen: dict[str, LoraTag] = {}
    for tag in tags:
        key = tag.name.replace("\\", "/")
        prev = seen.get(key)
        if prev is None:
            seen[key] = tag
        elif (prev.te, prev.unet) != (tag.te, tag.unet):
            raise PromptTagError(
                f"LoRA {tag.name!r} is tagged twice with different weights ({prev.text} and {tag.text}); "
                "give it once, with the weight you want"
            )
    return list(seen.values())


def split_file_weight(spec: str) -> tuple[str, float | None]:
    """``"FILE[:WEIGHT]"`` -> ``(file, weight or None)``.

    The weight is whatever follows the last ``:`` when that parses as a number, so ``C:\\loras\\x.safetensors``
    and ``x.safetensors`` keep their colons / have none. A file that exists under the whole name (colon included)
    is that file. Otherwise, when the part before the last ``:`` is an existing file or has a LoRA file extension
    (``x.safetensors:abc``), the part after it was meant as a weight and must be a number.

    Raises:
        PromptTagError: a weight that is not a (finite) number.
    """
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail.strip():
        try:
            value = float(tail)
        except ValueError:
            meant_weight = Path(head).expanduser().is_file() or Path(head).suffix.lower() in LORA_EXTENSIONS
            if meant_weight and not Path(spec).expanduser().exists():
                raise PromptTagError(
                    f"--lora {spec}: weight {tail.strip()!r} is not a number (expected FILE[:WEIGHT], e.g. "
                    f"{head}:0.8)"
                ) from None
            return spec, None
        if not math.isfinite(value):
            raise PromptTagError(f"--lora {spec}: weight {tail!r} is not a finite number")
        return head, value
    return spec, None


def list_loras(folder: str | os.PathLike[str]) -> list[Path]:
    """Every LoRA-looking file under ``folder`` (recursively), sorted."""
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in LORA_EXTENSIONS)


def find_lora(
    name: str, files: Sequence[str | os.PathLike[str]] = (), lora_dirs: Sequence[str | os.PathLike[str]] = ()
) -> Path:
    """Resolve a tag name to a file.

    Order: a given file whose stem (or path without extension) is ``name``; then ``DIR/name.<ext>`` in each LoRA
    folder (extensions in :data:`LORA_EXTENSIONS` order, or ``name`` itself if it has one); then a unique file of
    that stem anywhere below the folders.

    Raises:
        SourceNotFoundError: nothing matches (the message names the closest one).
        PromptTagError: several files below the folders have that stem.
    """
    norm = name.replace("\\", "/")
    for f in files:
        p = Path(f)
        if p.stem == norm or p.name == norm or p.with_suffix("").as_posix().endswith("/" + norm):
            return p
    candidates: list[Path] = []
    for d in lora_dirs:
        base = Path(d)
        direct = base / norm
        if direct.suffix.lower() in LORA_EXTENSIONS and direct.is_file():
            return direct
        for ext in LORA_EXTENSIONS:
            p = base / (norm + ext)
            if p.is_file():
                return p
        if "/" not in norm and base.is_dir():
            candidates += [p for p in list_loras(base) if p.stem == norm]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = [tag_name_in(c, lora_dirs) for c in candidates]
        raise PromptTagError(
            f"<lora:{name}> is ambiguous: {summarize(str(c) for c in candidates)}; write the sub-folder: "
            + ", ".join(f"<lora:{n}>" for n in names[:3]) + (" …" if len(names) > 3 else "")
        )
    known = [Path(f).stem for f in files]
    for d in lora_dirs:
        if Path(d).is_dir():
            known += [p.relative_to(d).with_suffix("").as_posix() for p in list_loras(d)]
    where = ", ".join(str(d) for d in lora_dirs) or "no --lora-dir given"
    raise SourceNotFoundError(
        f"<lora:{name}>: no LoRA file named {name!r} (looked in the --lora files and {where})"
        + did_you_mean(norm, known)
    )


def tag_name_in(path: Path, lora_dirs: Sequence[str | os.PathLike[str]]) -> str:
    """The path of ``path`` below the first LoRA folder that holds it, without the extension (``sub/style``); with
    the extension when a file of the same stem and a preferred extension sits beside it (``sub/style.pt`` next to
    ``sub/style.safetensors``), so that the name resolves to ``path`` through :func:`find_lora`."""
    for d in lora_dirs:
        try:
            rel = path.resolve().relative_to(Path(d).resolve())
        except ValueError:
            continue
        stem = rel.with_suffix("").as_posix()
        for ext in LORA_EXTENSIONS:  # the extension find_lora would pick for DIR/stem
            other = Path(d) / (stem + ext)
            if other.is_file():
                return stem if other.resolve() == path.resolve() else rel.as_posix()
        return stem
    return path.stem


def lora_tag_name(path: Path, lora_dirs: Sequence[str | os.PathLike[str]]) -> str:
    """The shortest name ``<lora:NAME>`` resolves to ``path`` by: its stem when that is unique below the folders,
    else its path below its folder (see :func:`tag_name_in`)."""
    try:
        if find_lora(path.stem, (), lora_dirs).resolve() == path.resolve():
            return path.stem
    except (PromptTagError, SourceNotFoundError):
        pass
    return tag_name_in(path, lora_dirs)


@dataclass(frozen=True, slots=True)
class LoraSpec:
    """One LoRA to load: its adapter name, file and weights.

    Attributes:
        name: adapter name (the file stem, or the tag name).
        path: the file.
        te: text-encoder weight.
        unet: denoiser weight.
        origin: ``"--lora"`` or the prompt tag text, for messages.
    """

    name: str
    path: Path
    te: float
    unet: float
    origin: str


def plan_loras(
    prompt: str,
    lora_args: Sequence[str] = (),
    lora_dirs: Sequence[str | os.PathLike[str]] = (),
    *,
    negative_prompt: str | None = None,
) -> tuple[str, list[LoraSpec]]:
    """Combine ``--lora FILE[:WEIGHT]`` arguments and the prompt's tags into one list of LoRAs to load.

    Rules:
        * ``--lora FILE`` loads FILE at weight 1.0 (``FILE:0.6`` at 0.6); its adapter name is the file stem.
        * a tag resolves against the ``--lora`` files (by stem) and the LoRA folders (see :func:`find_lora`).
        * a tag that names a ``--lora`` file given *without* a weight sets that file's weight; with a weight, the
          two must agree.
        * the same name twice with different weights, or two different files with the same stem, raise
          :class:`PromptTagError`; exact repeats load once.
        * tags are stripped from the prompt; tags in ``negative_prompt`` raise (they are not applied there).

    Returns:
        ``(clean_prompt, specs)`` in order: ``--lora`` files first, then tags in prompt order.

    Raises:
        PromptTagError: malformed tags and conflicting repeats.
        SourceNotFoundError: a ``--lora`` file or a tag's file does not exist.
    """
    if negative_prompt and _OPEN.search(negative_prompt):
        raise PromptTagError("LoRA tags in the negative prompt are not applied; put them in the prompt")
    clean, tags = parse_prompt(prompt)
    tags = merge_tags(tags)

    specs: dict[str, LoraSpec] = {}
    explicit: dict[str, bool] = {}
    files: list[Path] = []
    for arg in lora_args:
        file, weight = split_file_weight(arg)
        path = Path(file).expanduser()
        if not path.is_file():
            raise SourceNotFoundError(
                f"--lora {arg}: {file} does not exist" if not path.exists() else f"--lora {arg}: {file} is not a file"
            )
        name = path.stem
        w = 1.0 if weight is None else weight
        prev = specs.get(name)
        if prev is not None:
            if prev.path.resolve() != path.resolve():
                raise PromptTagError(
                    f"two LoRA files share the name {name!r} ({prev.path} and {path}); rename one"
                )
            if weight is None or (explicit[name] and prev.unet == w):
                continue  # the same file again, nothing new
            if explicit[name]:
                raise PromptTagError(f"--lora {name} is given twice with different weights ({prev.unet:g} and {w:g})")
        specs[name] = LoraSpec(name=name, path=path, te=w, unet=w, origin=f"--lora {arg}")
        explicit[name] = weight is not None
        files.append(path)

    for tag in tags:
        path = find_lora(tag.name, files, lora_dirs)
        name = path.stem
        prev = specs.get(name)
        if prev is not None:
            if prev.path.resolve() != path.resolve():
                raise PromptTagError(
                    f"{tag.text} resolves to {path}, but {prev.origin} already uses the name {name!r} for {prev.path}"
                )
            if prev.origin.startswith("--lora") and not explicit[name]:
                specs[name] = LoraSpec(name=name, path=prev.path, te=tag.te, unet=tag.unet, origin=tag.text)
                continue
            if (prev.te, prev.unet) != (tag.te, tag.unet):
                raise PromptTagError(
                    f"LoRA {name!r} is given twice with different weights ({prev.origin} and {tag.text}); give it once"
                )
            continue
        specs[name] = LoraSpec(name=name, path=path, te=tag.te, unet=tag.unet, origin=tag.text)
    return clean, list(specs.values())
