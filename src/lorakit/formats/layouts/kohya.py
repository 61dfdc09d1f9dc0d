"""kohya / A1111 / LyCORIS / OneTrainer "flattened" layouts (formats.md §3, §4, §8), and the kohya writer (the only
one lorakit has: ``lorakit.save``, ``lorakit.convert``, the demo and the benchmarks write kohya files through it).

``<prefix>_<module path with '.' -> '_'>.<suffix>``: ``lora_unet_`` (UNet, or the SD3 transformer with SAI MMDiT names),
``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` / ``lora_te3_`` (text encoders), ``lora_transformer_`` (OneTrainer legacy SD3),
``lycoris_`` (LyCORIS ``create_lycoris`` on diffusers names), ``oft_unet_`` (kohya ``networks.oft``). Names may be
diffusers-derived, CompVis/SGM (``input_blocks``...), or SAI MMDiT (``joint_blocks``...); all are resolved through the
model's alias index. The suffixes are the kinds' own (``lora_down``/``up``/``mid``, ``hada_*``, ``lokr_*``, ``diff``,
``dora_scale``, ``oft_blocks``/``oft_diag``/``rescale``, ``weight``/``on_input``, ``a1.weight``…), plus ``alpha``; the
kohya layout also reads diffusers' kohya export, whose text-encoder-trained UNet keys keep the attention-processor
spelling (``lora_unet_…_to_k_lora.down.weight``) and whose DoRA magnitudes keep a dotted tail
(``lora_unet_…_attn1.to_k.lora_magnitude_vector``; ``formats.groups`` groups both spellings as one module).
"""

from __future__ import annotations

from collections import Counter

from torch import Tensor

from ...errors import FormatError, summarize
from ...families import Family, detect
from ...targets import build_index, reference_components, sd_unet
from ...targets import clip as clip_targets
from ..keys import ATTNPROC, KOHYA, PEFT, Prefix
from ..registry import Adapters, Layout, get

#: families whose kohya files name the UNet's modules after the original SGM code (sd-scripts' SDXL trainer; SD1/SD2
#: files use diffusers-derived names). A family fact kept here until the Family record carries it.
_SGM_NAMED = frozenset({"sdxl"})


def _family(adapters: Adapters, family: Family | None) -> tuple[Family, bool]:
    """The family to name keys for, and whether it is certain (asked for, or the only one the adapters fit)."""
    if family is not None:
        return family, True
    cands = detect.candidates([p for mods in adapters.values() for p in mods], list(adapters))
    if not cands:
        raise FormatError(
            f"the kohya layout names keys per model family; no family has components {summarize(sorted(adapters))}: "
            "pass family="
        )
    return cands[0], len(cands) == 1


def _sgm_names(family: Family) -> dict[str, str]:
    """diffusers path -> SGM name of the family's reference UNet (its structure fixes the numbering)."""
    unet = reference_components(family.name)[family.denoiser]
    idx = build_index(unet, family.denoiser)
    return {p: n for n, p in sd_unet.sgm_aliases(unet, list(idx.modules)).items()}


def _native_prefix(layout: str, comp: str, fam: Family) -> str | None:
    """The key prefix a kind's own layout (:meth:`AdapterKind.native`) has for ``comp``, or ``None``."""
    for p in get(layout).prefixes:
        if p.scope == comp or (p.scope == "denoiser" and comp == fam.denoiser):
            return p.text
    return None


def write(adapters: Adapters, family: Family | None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """kohya keys: the family's prefixes (``Family.kohya_prefixes``), SGM UNet names for SDXL, transformers-4 CLIP
    paths (``text_model.`` added), LyCORIS suffixes with an ``.alpha`` per module (alpha = rank written out when
    absent), and the sd-scripts header fields (``ss_network_module``/``_dim``/``_alpha``, and
    ``ss_base_model_version`` from the Family record when the family is certain). A kind with a layout of its own
    (kohya OFT: ``oft_unet_``) is written in it where that layout has a prefix for the component."""
    fam, certain = _family(adapters, family)
    sgm = _sgm_names(fam) if certain and fam.name in _SGM_NAMED and fam.denoiser in adapters else {}
    sd: dict[str, Tensor] = {}
    networks: set[str] = set()
    for comp, mods in adapters.items():
        prefix = fam.kohya_prefixes.get(comp)
        if prefix is None:
            raise FormatError(
                f"the kohya layout of {fam.display} has no prefix for component {comp!r} "
                f"(has {summarize(fam.kohya_prefixes)})"
            )
        for path, kind in mods.items():
            if comp == fam.denoiser:
                name = sgm.get(path, path)
            else:
                name = clip_targets.kohya_path(path)
            native = kind.native()
            own = None if native is None else _native_prefix(native[0], comp, fam)
            if native is not None and own is not None:
                key, tensors, network = own + name.replace(".", "_"), native[1], kind.network_module
            else:
                key, tensors = prefix + name.replace(".", "_"), kind.lycoris_tensors()
                network = kind.network_module if native is None else "lycoris.kohya"
            networks.add(network)
            for suffix, t in tensors.items():
                sd[f"{key}.{suffix}"] = t
    every = [k for mods in adapters.values() for k in mods.values()]
    ranks = Counter(r for k in every if (r := k.rank) is not None)
    alphas = Counter(float(a) for k in every if (a := k.alpha) is not None)
    meta = {
        "ss_network_module": networks.pop() if len(networks) == 1 else "lycoris.kohya",
        "ss_network_dim": str(ranks.most_common(1)[0][0]) if ranks else "None",
        "ss_network_alpha": str(alphas.most_common(1)[0][0]) if alphas else "None",
    }
    if certain and fam.base_model_tag is not None:
        meta["ss_base_model_version"] = fam.base_model_tag
    return sd, meta


KOHYA_LAYOUT = Layout(
    name="kohya",
    description="kohya/A1111/LyCORIS-in-sd-scripts: lora_unet_/lora_te[123]_ + underscored names, .alpha",
    prefix_families=frozenset({"kohya"}),
    # ATTNPROC: diffusers' convert_state_dict_to_kohya leaves "<path>_to_k_lora.down.weight" unconverted when the text
    # encoders were trained too (formats.md, diffusers' advanced SDXL script)
    styles=frozenset({KOHYA, PEFT, ATTNPROC}),
    header_keys=("ss_network_module", "ss_network_dim", "ss_network_alpha"),
    writer=write,
    prefixes=(
        Prefix("lora_unet_", "denoiser", "underscored", "kohya"),
        Prefix("lora_te_", "text_encoder", "underscored", "kohya"),
        Prefix("lora_te1_", "text_encoder", "underscored", "kohya"),
        Prefix("lora_te2_", "text_encoder_2", "underscored", "kohya"),
        Prefix("lora_te3_", "text_encoder_3", "underscored", "kohya"),
    ),
)

ONETRAINER = Layout(
    name="onetrainer",
    description="OneTrainer legacy SD3: lora_transformer_ + underscored diffusers names",
    prefix_families=frozenset({"onetrainer"}),
    styles=frozenset({KOHYA, PEFT}),
    prefixes=(Prefix("lora_transformer_", "transformer", "underscored", "onetrainer"),),
)

LYCORIS = Layout(
    name="lycoris",
    description="LyCORIS create_lycoris: lycoris_ + underscored diffusers names",
    prefix_families=frozenset({"lycoris"}),
    styles=frozenset({KOHYA, PEFT}),
    prefixes=(Prefix("lycoris_", "denoiser", "underscored", "lycoris"),),
)

KOHYA_OFT = Layout(
    name="kohya-oft",
    description="kohya OFT (sd-scripts networks.oft): oft_unet_ + underscored names, oft_blocks + .alpha",
    prefix_families=frozenset({"oft"}),
    styles=frozenset({KOHYA}),
    prefixes=(Prefix("oft_unet_", "denoiser", "underscored", "oft"),),
)

EMBEDDING = Layout(
    name="embedding",
    description="embedded textual inversions bundle_emb.<token>.* (not adapter weights)",
    prefix_families=frozenset({"embedding"}),
    styles=frozenset({KOHYA, PEFT}),
    prefixes=(Prefix("bundle_emb.", None, "dotted", "embedding"),),
)

LAYOUTS: tuple[Layout, ...] = (KOHYA_LAYOUT, ONETRAINER, LYCORIS, KOHYA_OFT, EMBEDDING)
