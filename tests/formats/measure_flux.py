"""Measure what diffusers 0.42.1's FluxPipeline.load_lora_weights does with each Flux LoRA layout (the diffusers
column of README's Flux table). Not a test:
    python tests/formats/measure_flux.py [tiny|real]          (ONLY=<substring> runs the matching rows)

tiny: random-tensor files on tiny_pipeline("flux"); after load, fuse_lora(transformer+text_encoder) and compare each
      module's weight change with an explicit fp64 merge in the file's own layout (fused rows split by the BFL map,
      final-layer halves swapped, scale alpha/rank). Verdicts: exact / wrong values / partly / silently nothing / error.
real: the same builders at FLUX.1 [dev] size (rank 1) on a meta-device transformer + CLIP-L (low_cpu_mem_usage=True),
      reporting how many modules got a PEFT adapter vs how many the file targets, or the error.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import sys
import tempfile
import warnings

import torch
from safetensors.torch import save_file
from torch import nn

from lorakit.targets import flux
from lorakit.tiny import tiny_pipeline

torch.set_num_threads(1)
warnings.filterwarnings("ignore")
G = torch.Generator().manual_seed(0)
LOG: list[str] = []


class _Grab(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            LOG.append(record.getMessage().split("\n")[0][:160])


for _n in ("diffusers", "peft"):
    logging.getLogger(_n).addHandler(_Grab())
    logging.getLogger(_n).setLevel(logging.WARNING)
    logging.getLogger(_n).propagate = False

MODE = sys.argv[1] if len(sys.argv) > 1 else "tiny"
R = int(os.environ.get("RANK", 2 if MODE == "tiny" else 1))


def rnd(*s: int) -> torch.Tensor:
    return torch.randn(*s, generator=G) * 0.3


def linears(m: nn.Module) -> dict[str, tuple[int, int]]:
    return {p: tuple(x.weight.shape) for p, x in m.named_modules() if isinstance(x, nn.Linear)}


class Spec:
    """A file under construction + the merge it should produce (diffusers path -> fp64 delta)."""

    def __init__(self) -> None:
        self.sd: dict[str, torch.Tensor] = {}
        self.meta: dict[str, str] | None = None
        self.expect: dict[tuple[str, str], torch.Tensor] = {}  # (component, path) -> delta
        self.targets: set[tuple[str, str]] = set()

    def add_delta(self, comp: str, paths: tuple[str, ...], op: str, delta) -> None:
        if MODE == "real":  # no numerics at real size: only which modules get adapters
            self.targets.update((comp, p) for p in paths)
            return
        if op == "swap":
            delta = torch.cat(delta.chunk(2, 0)[::-1], 0)
        rows = [SH[comp][p][0] for p in paths]
        for p, part in zip(paths, delta.split(rows, 0)):
            key = (comp, p)
            self.targets.add(key)
            self.expect[key] = self.expect.get(key, 0) + part


def lora(spec: Spec, comp: str, paths: tuple[str, ...], op: str, names: tuple[str, str], stem: str,
         alpha: float | None, r: int = R, *, alpha_key: str | None = None, scale_in_expect: float | None = None) -> None:
    out = sum(SH[comp][p][0] for p in paths)
    inp = SH[comp][paths[0]][1]
    a, b = rnd(r, inp), rnd(out, r)
    spec.sd[f"{stem}.{names[0]}"] = a
    spec.sd[f"{stem}.{names[1]}"] = b
    if alpha is not None and alpha_key is not None:
        spec.sd[f"{stem}.{alpha_key}"] = torch.tensor(float(alpha))
    s = scale_in_expect if scale_in_expect is not None else ((alpha / r) if alpha is not None else 1.0)
    spec.add_delta(comp, paths, op, None if MODE == "real" else s * (b.double() @ a.double()))


# ------------------------------------------------------------------------------------------------- the models
def make_base():
    if MODE == "tiny":
        return tiny_pipeline("flux")
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = tiny_pipeline("flux")
    with torch.device("meta"):
        tr = FluxTransformer2DModel(in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                                    guidance_embeds=True, axes_dims_rope=(16, 56, 56))
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=12, num_attention_heads=12, projection_dim=768))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny.vae, text_encoder=te,
                        tokenizer=tiny.tokenizer, text_encoder_2=tiny.text_encoder_2, tokenizer_2=tiny.tokenizer_2,
                        transformer=tr)


BASE = make_base()
SH = {"transformer": linears(BASE.transformer), "text_encoder": linears(BASE.text_encoder),
      "text_encoder_2": linears(BASE.text_encoder_2)}
BFL = {n: (p, op) for n, p, op in flux.bfl_entries(BASE.transformer) if all(x in SH["transformer"] for x in p)}
BASE_NAMES = [n for n in BFL if ".processor." not in n and n != "img_in.proj"
              and not re.search(r"(\.qkv|linear1)\.\d$", n)]
DOUBLE_ONLY = [n for n in BASE_NAMES if n.startswith("double_blocks.")]
CLIP = [p for p in SH["text_encoder"] if ".layers." in p]
T5 = [p for p in SH["text_encoder_2"] if ".block." in p]


def kohya(n: str) -> str:
    return "lora_unet_" + n.replace(".", "_")


KD = ("lora_down.weight", "lora_up.weight")
PA = ("lora_A.weight", "lora_B.weight")


# ------------------------------------------------------------------------------------------------- the layouts
def L_diffusers(text_model_prefix: bool = True, header_alpha: bool = False) -> Spec:
    s = Spec()
    for p in SH["transformer"]:
        lora(s, "transformer", (p,), "direct", PA, f"transformer.{p}", 4.0 if header_alpha else None)
    for p in CLIP:
        q = ("text_model." + p) if text_model_prefix else p
        lora(s, "text_encoder", (p,), "direct", PA, f"text_encoder.{q}", 4.0 if header_alpha else None)
    if header_alpha:
        cfg = {"r": R, "lora_alpha": 4.0, "target_modules": sorted({p.rsplit(".", 1)[-1] for p in SH["transformer"]})}
        tcfg = {"r": R, "lora_alpha": 4.0, "target_modules": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]}
        packed = {f"transformer.{k}": v for k, v in cfg.items()} | {f"text_encoder.{k}": v for k, v in tcfg.items()}
        s.meta = {"lora_adapter_metadata": json.dumps(packed), "format": "pt"}
    return s


def L_diffusers_dora() -> Spec:
    s = Spec()
    for p in [p for p in SH["transformer"] if p.startswith("transformer_blocks.0.attn.")]:
        lora(s, "transformer", (p,), "direct", PA, f"transformer.{p}", None)
        s.sd[f"transformer.{p}.lora_magnitude_vector"] = 1 + rnd(SH["transformer"][p][0]).abs()
        s.expect[("transformer", p)] = ("dora", s.sd[f"transformer.{p}.lora_magnitude_vector"].double(),
                                        s.expect.get(("transformer", p)))
    return s


def L_peft_base_model() -> Spec:
    s = Spec()
    for p in SH["transformer"]:
        lora(s, "transformer", (p,), "direct", PA, f"base_model.model.{p}", None)
    return s


def L_kohya(names: list[str], te1: bool | tuple[str, ...] = False, te3: str | None = None, alpha: float = 1.0) -> Spec:
    s = Spec()
    for n in names:
        paths, op = BFL[n]
        lora(s, "transformer", paths, op, KD, kohya(n), alpha, alpha_key="alpha")
    if te1:
        for p in CLIP if te1 is True else [p for p in CLIP if p.endswith(te1)]:
            lora(s, "text_encoder", (p,), "direct", KD, "lora_te1_" + ("text_model." + p).replace(".", "_"), alpha,
                 alpha_key="alpha")
    if te3:
        for p in T5:
            lora(s, "text_encoder_2", (p,), "direct", KD, te3 + p.replace(".", "_"), alpha, alpha_key="alpha")
    return s


def L_kohya_split_qkv(alpha: float = 1.0) -> Spec:
    """sd-scripts split_qkv=True: stored fused, down (3r, in) = [A_q; A_k; A_v], up (3d, 3r) block-diagonal; training
    scale alpha / r (per split)."""
    s = Spec()
    for n in [n for n in DOUBLE_ONLY if n.endswith("attn.qkv")]:
        paths, _ = BFL[n]
        d, inp = SH["transformer"][paths[0]]
        a = [rnd(R, inp) for _ in paths]
        b = [rnd(d, R) for _ in paths]
        up = torch.zeros(3 * d, 3 * R)
        for j in range(3):
            up[j * d : (j + 1) * d, j * R : (j + 1) * R] = b[j]
        s.sd[f"{kohya(n)}.lora_down.weight"] = torch.cat(a, 0)
        s.sd[f"{kohya(n)}.lora_up.weight"] = up
        s.sd[f"{kohya(n)}.alpha"] = torch.tensor(alpha)
        for p, aj, bj in zip(paths, a, b):
            s.add_delta("transformer", (p,), "direct", None if MODE == "real" else (alpha / R) * (bj.double() @ aj.double()))
    return s


def L_onetrainer(dora: bool, te2: bool, attention_only: bool = True) -> Spec:
    s = Spec()
    for p in [p for p in SH["transformer"] if "transformer_blocks." in p and (".attn." in p or not attention_only)]:
        stem = "lora_transformer_" + p.replace(".", "_")
        lora(s, "transformer", (p,), "direct", KD, stem, 1.0, alpha_key="alpha")
        if dora:
            s.sd[f"{stem}.dora_scale"] = 1 + rnd(1, SH["transformer"][p][1]).abs()
            s.expect[("transformer", p)] = ("dora_in", s.sd[f"{stem}.dora_scale"].double(), s.expect.get(("transformer", p)))
    for p in CLIP:
        lora(s, "text_encoder", (p,), "direct", KD, "lora_te1_" + ("text_model." + p).replace(".", "_"), 1.0,
             alpha_key="alpha")
    if te2:
        for p in T5:
            lora(s, "text_encoder_2", (p,), "direct", KD, "lora_te2_" + p.replace(".", "_"), 1.0, alpha_key="alpha")
    return s


def L_bfl(prefix: str, names: list[str], roles: tuple[str, str], alpha_key: str | None = None) -> Spec:
    s = Spec()
    for n in names:
        paths, op = BFL[n]
        lora(s, "transformer", paths, op, roles, prefix + n, 1.0 if alpha_key else None, alpha_key=alpha_key)
    return s


def L_onetrainer_bfl() -> Spec:
    s = Spec()
    for n in [n for n in BFL if n.split(".")[-1].isdigit() and (".qkv." in n or ".linear1." in n)]:
        paths, op = BFL[n]
        lora(s, "transformer", paths, op, KD, "transformer." + n, 1.0, alpha_key="alpha")
    return s


def L_xlabs() -> Spec:
    s = Spec()
    for n in [n for n in BFL if ".processor." in n and "_lora" in n]:  # XLabs' own names (not the attnproc spellings)
        paths, op = BFL[n]
        lora(s, "transformer", paths, op, ("down.weight", "up.weight"), n, None)
    return s


def L_control() -> Spec:
    """BFL Control LoRA: bare BFL names, lora_A/B + lora_B.bias, q/k norm scales, img_in widened to 2x inputs."""
    s = Spec()
    for n in BASE_NAMES:
        paths, op = BFL[n]
        if n == "img_in":
            d, inp = SH["transformer"][paths[0]]
            a, b = rnd(R, 2 * inp), rnd(d, R)
            s.sd["img_in.lora_A.weight"], s.sd["img_in.lora_B.weight"] = a, b
            s.sd["img_in.lora_B.bias"] = rnd(d)
            s.targets.add(("transformer", "x_embedder"))
            s.expect[("transformer", "x_embedder")] = ("widened", b.double() @ a.double())
            continue
        lora(s, "transformer", paths, op, PA, n, None)
        out = sum(SH["transformer"][p][0] for p in paths)
        bias = rnd(out)
        s.sd[f"{n}.lora_B.bias"] = bias
    for bfl, _ in flux.bfl_norm_params(BASE.transformer):
        s.sd[bfl] = 1 + rnd(BASE.transformer.config.attention_head_dim)
    return s


def L_fal_kontext() -> Spec:
    names = [n for n in BASE_NAMES if n.startswith(("double_blocks.", "single_blocks.")) or n == "final_layer.linear"]
    return L_bfl("base_model.model.", names, PA)


def L_lycoris(prefix: str, bfl_names: bool, kind: str) -> Spec:
    s = Spec()
    mods = [("transformer_blocks.0.attn.to_q", None)] if not bfl_names else [("double_blocks.0.img_attn.proj", None)]
    for name, _ in mods:
        if bfl_names:
            paths, _op = BFL[name]
            p = paths[0]
        else:
            p = name
        out, inp = SH["transformer"][p]
        stem = prefix + name.replace(".", "_")
        if kind == "lokr":
            w1, w2 = rnd(2, 2), rnd(out // 2, inp // 2)
            s.sd[f"{stem}.lokr_w1"], s.sd[f"{stem}.lokr_w2"] = w1, w2
            s.sd[f"{stem}.alpha"] = torch.tensor(1.0)
            s.add_delta("transformer", (p,), "direct", None if MODE == "real" else torch.kron(w1.double(), w2.double()))
        else:
            diff = rnd(out, inp)
            s.sd[f"{stem}.diff"] = diff
            s.add_delta("transformer", (p,), "direct", diff.double())
    return s


def L_peft_lokr() -> Spec:
    s = Spec()
    p = "transformer_blocks.0.attn.to_q"
    out, inp = SH["transformer"][p]
    w1, w2 = rnd(2, 2), rnd(out // 2, inp // 2)
    s.sd[f"transformer.{p}.lokr_w1"], s.sd[f"transformer.{p}.lokr_w2"] = w1, w2
    s.add_delta("transformer", (p,), "direct", torch.kron(w1.double(), w2.double()))
    return s


def L_comfy_clip() -> Spec:
    s = L_bfl("diffusion_model.", DOUBLE_ONLY, KD, "alpha")
    for p in CLIP:
        lora(s, "text_encoder", (p,), "direct", KD, "text_encoders.clip_l.transformer.text_model." + p, 1.0,
             alpha_key="alpha")
    for p in T5:
        lora(s, "text_encoder_2", (p,), "direct", KD, "text_encoders.t5xxl.transformer." + p, 1.0, alpha_key="alpha")
    return s


EMB = [n for n in BASE_NAMES if not n.startswith(("double_blocks.", "single_blocks."))]
LAYOUTS = {
    "diffusers PEFT (transformer.+text_encoder.text_model.)": lambda: L_diffusers(True),
    "diffusers PEFT, CLIP keys without text_model.": lambda: L_diffusers(False),
    "diffusers PEFT + lora_adapter_metadata header (alpha 4, r 2)": lambda: L_diffusers(True, True),
    "diffusers PEFT DoRA (lora_magnitude_vector)": L_diffusers_dora,
    "raw PEFT base_model.model.<diffusers>": L_peft_base_model,
    "kohya all blocks (lora_unet_double/single_blocks_*)": lambda: L_kohya(DOUBLE_ONLY + [n for n in BASE_NAMES if n.startswith("single_blocks.")]),
    "kohya double blocks only (train_blocks=double)": lambda: L_kohya(DOUBLE_ONLY),
    "kohya double + lora_te1_ (CLIP)": lambda: L_kohya(DOUBLE_ONLY, te1=True),
    "kohya double + lora_te1_ q_proj/v_proj/mlp only": lambda: L_kohya(DOUBLE_ONLY, te1=("q_proj", "v_proj", "mlp.fc1")),
    "kohya double + lora_te3_ (T5, sd-scripts)": lambda: L_kohya(DOUBLE_ONLY, te3="lora_te3_"),
    "kohya embedders + final_layer (in_dims)": lambda: L_kohya(EMB),
    "kohya split_qkv=True (block-diag up)": L_kohya_split_qkv,
    "OneTrainer lora_transformer_ + te1": lambda: L_onetrainer(False, False),
    "OneTrainer lora_transformer_ every Linear (proj_mlp, norm, ff, proj_out)": lambda: L_onetrainer(False, False, False),
    "OneTrainer lora_transformer_ + te1 + te2 (T5)": lambda: L_onetrainer(False, True),
    "OneTrainer DoRA (dora_scale (1,in))": lambda: L_onetrainer(True, False),
    "ComfyUI diffusion_model.<BFL> lora_down/up, double only": lambda: L_bfl("diffusion_model.", DOUBLE_ONLY, KD, "alpha"),
    "ComfyUI diffusion_model.<BFL> lora_down/up, all": lambda: L_bfl("diffusion_model.", BASE_NAMES, KD, "alpha"),
    "ComfyUI + text_encoders.clip_l / t5xxl keys": L_comfy_clip,
    "ai-toolkit/Comfy diffusion_model.<BFL> lora_A/B": lambda: L_bfl("diffusion_model.", BASE_NAMES, PA),
    "transformer.<BFL> lora_A/B": lambda: L_bfl("transformer.", BASE_NAMES, PA),
    "OneTrainer BFL transformer.<BFL>.qkv.0 lora_down/up": L_onetrainer_bfl,
    "XLabs double_blocks.i.processor.qkv_lora1 ...": L_xlabs,
    "BFL Control LoRA (norm scales, lora_B.bias, img_in x2)": L_control,
    "fal Kontext base_model.model.<BFL>": L_fal_kontext,
    "LyCORIS/SimpleTuner lycoris_<diffusers> LoKr": lambda: L_lycoris("lycoris_", False, "lokr"),
    "LyCORIS full lycoris_<diffusers>.diff": lambda: L_lycoris("lycoris_", False, "full"),
    "LyCORIS kohya lora_unet_<BFL> LoKr": lambda: L_lycoris("lora_unet_", True, "lokr"),
    "PEFT LoKr transformer.<diffusers>.lokr_w1/w2": L_peft_lokr,
}


# ------------------------------------------------------------------------------------------------- measuring
def adapters(pipe) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for comp in ("transformer", "text_encoder", "text_encoder_2"):
        m = getattr(pipe, comp)
        got = set()
        for p, mod in m.named_modules():
            if hasattr(mod, "base_layer") and (getattr(mod, "lora_A", None) or getattr(mod, "lokr_w1", None)
                                                  or getattr(mod, "lokr_w1_a", None)):
                got.add(p)
        out[comp] = got
    return out


def expected_weight(base: torch.Tensor, e, bias_rows=None) -> torch.Tensor | None:
    w = base.double()
    if isinstance(e, tuple) and e[0] == "dora":
        m, delta = e[1], e[2]
        v = w + delta
        return m[:, None] * v / v.norm(dim=1, keepdim=True)
    if isinstance(e, tuple) and e[0] == "dora_in":
        m, delta = e[1], e[2]
        v = w + delta
        return m * v / v.norm(dim=0, keepdim=True)
    if isinstance(e, tuple) and e[0] == "widened":
        return None
    return w + e


def measure(name: str, build) -> str:
    LOG.clear()
    spec = build()
    pipe = copy.deepcopy(BASE) if MODE == "tiny" else make_base()
    before = {c: {p: getattr(pipe, c).get_submodule(p).weight.detach().clone() for p in SH[c]}
              for c in SH} if MODE == "tiny" else None
    src: object = dict(spec.sd)
    tmp = None
    if spec.meta is not None:
        tmp = tempfile.mkdtemp()
        save_file({k: v.contiguous() for k, v in spec.sd.items()}, os.path.join(tmp, "f.safetensors"), spec.meta)
        src = os.path.join(tmp, "f.safetensors")
    try:
        pipe.load_lora_weights(src, adapter_name="x", low_cpu_mem_usage=(MODE == "real"))
    except Exception as exc:  # noqa: BLE001 - we report it
        msg = str(exc).split("\n")[0][:140]
        return f"error: {type(exc).__name__}: {msg}"
    got = adapters(pipe)
    n_t = {c: len([t for t in spec.targets if t[0] == c]) for c in SH}
    n_g = {c: len(got[c]) for c in SH}
    tally = ", ".join(f"{c}: {n_g[c]}/{n_t[c]}" for c in SH if n_t[c] or n_g[c])
    if MODE == "real":
        for c in SH:
            extra = got[c] - {t[1] for t in spec.targets if t[0] == c}
            if extra:
                tally += f" (+{len(extra)} unexpected in {c})"
        return f"adapters {tally}" + (f" | log: {LOG[0]}" if LOG else "")
    if not any(n_g.values()):
        changed = [p for c in SH for p in SH[c] if not torch.equal(getattr(pipe, c).get_submodule(p).weight, before[c][p])]
        what = "silently nothing" if not changed else f"no adapters, {len(changed)} weights overwritten"
        return what + (f" | log: {LOG[0]}" if LOG else "")
    try:
        pipe.fuse_lora(components=["transformer", "text_encoder"], lora_scale=1.0)
    except Exception as exc:  # noqa: BLE001
        return f"loads ({tally}); fuse error {type(exc).__name__}: {str(exc)[:80]}"
    bad, ok, missing = [], 0, []
    for (c, p), e in spec.expect.items():
        if p not in got[c]:
            missing.append(p)
            continue
        w = getattr(pipe, c).get_submodule(p).weight.detach().double()
        ref = expected_weight(before[c][p], e)
        if ref is None:
            ok += 1 if w.shape[1] == 2 * before[c][p].shape[1] else 0
            continue
        if w.shape != ref.shape:
            bad.append(f"{p} shape {tuple(w.shape)}")
            continue
        err = (w - ref).norm() / (ref - before[c][p].double()).norm().clamp_min(1e-12)
        if err < 1e-4:
            ok += 1
        else:
            dw = w - before[c][p].double()
            de = ref - before[c][p].double()
            ratio = (dw * de).sum() / (de * de).sum()
            bad.append(f"{p} (x{ratio:.3f})")
    verdict = "exact" if not bad and not missing else ("partly" if missing else "wrong values")
    out = f"{verdict} ({tally})"
    if missing:
        kinds = sorted({m.split(".")[0] + ("." + m.split(".")[2] if m.split(".")[0].endswith("blocks") else "") for m in missing})
        out += f"; not loaded: {', '.join(kinds)[:120]}"
    if bad:
        out += f"; wrong: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
    if LOG:
        out += f" | log: {LOG[0]}"
    return out


if __name__ == "__main__":
    only = os.environ.get("ONLY")
    print(f"| layout | diffusers 0.42.1 ({MODE}) |\n|---|---|")
    for name, build in LAYOUTS.items():
        if only and only not in name:
            continue
        print(f"| {name} | {measure(name, build).replace('|', '/')} |", flush=True)
