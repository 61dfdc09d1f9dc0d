"""Measure what diffusers' own ``load_lora_weights`` does with each layout (tiny pipelines, fp32, CPU).

Not a test: ``python tests/formats/measure_diffusers.py`` prints a markdown table used in ``docs/formats.md``. Each
file is built from random canonical adapters on the tiny pipeline's modules and written in the layout under test;
the same file is converted by lorakit, and diffusers' result is compared with lorakit's:

* ``same as lorakit`` — diffusers' denoiser/text-encoder outputs equal lorakit's (rel. 1e-4);
* ``silently nothing`` — no error and the outputs equal the base model's;
* ``different`` — loads but gives other outputs (dropped modules or another scale);
* ``error`` — the exception diffusers raised.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch

from lorakit.engine import AdapterManager
from lorakit.formats import from_canonical, to_canonical
from lorakit.kinds import DoRA, Full, LoHa, LoKr, LoRA
from lorakit.tiny import tiny_pipeline

torch.set_num_threads(1)
logging.disable(logging.WARNING)
warnings.filterwarnings("ignore")
G = torch.Generator().manual_seed(0)


def rnd(*s):
    return torch.randn(*s, generator=G) * 0.3


def lora_for(module, r=2, alpha=None, conv_k=None):
    w = module.weight
    if w.dim() == 4:
        k = w.shape[-1]
        return LoRA(down=rnd(r, w.shape[1], k, k), up=rnd(w.shape[0], r, 1, 1), alpha=alpha)
    return LoRA(down=rnd(r, w.shape[1]), up=rnd(w.shape[0], r), alpha=alpha)


def outputs(pipe, family):
    den = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if family in ("sd1", "sd2", "sdxl"):
            kw = dict(sample=torch.randn(1, 4, 8, 8, generator=g), timestep=torch.tensor([10]),
                      encoder_hidden_states=torch.randn(1, 5, den.config.cross_attention_dim, generator=g))
            if family == "sdxl":
                n = den.config.projection_class_embeddings_input_dim - 6 * den.config.addition_time_embed_dim
                kw["added_cond_kwargs"] = {"text_embeds": torch.randn(1, n, generator=g), "time_ids": torch.randn(1, 6, generator=g)}
            d = den(**kw)[0]
        else:
            c = den.config
            d = den(hidden_states=torch.randn(1, c.in_channels, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(1, 5, c.joint_attention_dim, generator=g),
                    pooled_projections=torch.randn(1, c.pooled_projection_dim, generator=g), timestep=torch.tensor([10]))[0]
        t = pipe.text_encoder(torch.tensor([[1, 5, 9, 2]]))[0]
    return d, t


def classify(pipe_factory, family, sd, meta, lorakit_comps_fn):
    base = pipe_factory()
    b_out = outputs(base, family)
    # lorakit
    lk = pipe_factory()
    comps = lorakit_comps_fn(lk)
    conv = to_canonical(sd, meta, comps)
    for c, mods in conv.adapters.items():
        AdapterManager(comps[c]).add_adapter("x", mods)
    l_out = outputs(lk, family)
    # diffusers
    df = pipe_factory()
    try:
        df.load_lora_weights(copy.deepcopy(sd), adapter_name="x")
    except Exception as exc:  # noqa: BLE001
        return f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
    try:
        d_out = outputs(df, family)
    except Exception as exc:  # noqa: BLE001
        return f"loads, then the forward fails: {type(exc).__name__}: {str(exc).splitlines()[0][:70]}"
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()  # noqa: E731
    same_l = all(rel(d, l_) < 1e-4 for d, l_ in zip(d_out, l_out))
    same_b = all(rel(d, b) < 1e-7 for d, b in zip(d_out, b_out))
    if same_l:
        return "same as lorakit"
    if same_b:
        return "silently nothing"
    diffs = [f"{rel(d, l_):.2g}" for d, l_ in zip(d_out, l_out)]
    return f"different (rel. diff denoiser {diffs[0]}, text encoder {diffs[1]})"


def sd_cases(family):
    pipe = tiny_pipeline(family)
    unet, te = pipe.unet, pipe.text_encoder
    mods = dict(unet.named_modules())
    att = [p for p in mods if p.endswith("attn1.to_q")][0].rsplit(".attn1", 1)[0]
    res = [p for p in mods if p.endswith("resnets.0.conv1")][0]
    te_q = [p for p, _ in te.named_modules() if p.endswith("layers.0.self_attn.q_proj")][0]
    te_fc = [p for p, _ in te.named_modules() if p.endswith("layers.0.mlp.fc1")][0]
    te_o = te_q.replace("q_proj", "out_proj")

    def adapters(alphas=(1.0, 1.0), kinds="lora"):
        u = {f"{att}.attn1.to_q": lora_for(mods[f"{att}.attn1.to_q"], alpha=alphas[0]),
             f"{att}.attn1.to_v": lora_for(mods[f"{att}.attn1.to_v"], alpha=alphas[1]),
             f"{att}.ff.net.2": lora_for(mods[f"{att}.ff.net.2"], alpha=alphas[1]),
             res: lora_for(mods[res], alpha=alphas[1])}
        if kinds == "tucker":
            w = mods[res].weight
            u[res] = LoRA(down=rnd(2, w.shape[1], 1, 1), mid=rnd(2, 2, 3, 3), up=rnd(w.shape[0], 2, 1, 1), alpha=1.0)
        if kinds == "loha":
            w = mods[f"{att}.ff.net.2"].weight
            u[f"{att}.ff.net.2"] = LoHa(w1a=rnd(w.shape[0], 2), w1b=rnd(2, w.shape[1]), w2a=rnd(w.shape[0], 2), w2b=rnd(2, w.shape[1]), alpha=1.0)
        if kinds == "lokr":
            w = mods[f"{att}.ff.net.2"].weight
            u[f"{att}.ff.net.2"] = LoKr(w1=rnd(2, 2), w2=rnd(w.shape[0] // 2, w.shape[1] // 2))
        if kinds == "full":
            u[f"{att}.ff.net.2"] = Full(diff=rnd(*mods[f"{att}.ff.net.2"].weight.shape))
        if kinds == "dora":
            inner = u[f"{att}.ff.net.2"]
            u[f"{att}.ff.net.2"] = DoRA(inner=inner, magnitude=mods[f"{att}.ff.net.2"].weight.detach().norm(dim=1) * 1.3)
        if kinds == "dora-all":
            u = {p: DoRA(inner=k, magnitude=mods[p].weight.detach().flatten(1).norm(dim=1) * 1.3) for p, k in u.items()}
        tm = {m: lora_for(dict(te.named_modules())[m], alpha=alphas[0]) for m in (te_q, te_o, te_fc)}
        return {"unet": u, "text_encoder": tm}

    fam = family
    factory = lambda: tiny_pipeline(fam)  # noqa: E731
    comps = lambda p: {"unet": p.unet, "text_encoder": p.text_encoder}  # noqa: E731
    rows = []

    def row(name, sd, meta=None):
        rows.append((name, classify(factory, family, sd, meta, comps)))

    sd, meta = from_canonical(adapters(), "diffusers")
    row("diffusers PEFT-style (+ lora_adapter_metadata) as a dict", sd, None)
    inter = {k.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight") if ("to_q" in k or "to_v" in k) else k: v for k, v in sd.items()}
    row("mixed .lora.down (attn) + lora_A (others) in one component", inter)
    procs = {k.replace(".attn1.to_q.lora_A.weight", ".attn1.processor.to_q_lora.down.weight").replace(".attn1.to_q.lora_B.weight", ".attn1.processor.to_q_lora.up.weight")
             .replace(".attn1.to_v.lora_A.weight", ".attn1.processor.to_v_lora.down.weight").replace(".attn1.to_v.lora_B.weight", ".attn1.processor.to_v_lora.up.weight"): v
             for k, v in sd.items() if "attn1.to_" in k}
    row("old attention processors, unet. prefix", procs)
    row("old attention processors, no prefix", {k.removeprefix("unet."): v for k, v in procs.items()})
    peft_sd, peft_meta = from_canonical({"unet": adapters()["unet"]}, "peft")
    row("raw PEFT base_model.model.", peft_sd)
    row("kohya LoRA/LoCon, uniform alpha", from_canonical(adapters(), "kohya", family=family)[0])
    row("kohya, alpha differs per module (to_q 1, others 8)", from_canonical(adapters((1.0, 8.0)), "kohya", family=family)[0])
    from lorakit.targets import sd_unet

    sgm = {p: n for n, p in sd_unet.sgm_aliases(unet, list(mods)).items()}
    ko = from_canonical({"unet": adapters()["unet"]}, "kohya")[0]
    by_path = {f"lora_unet_{p.replace('.', '_')}": f"lora_unet_{n.replace('.', '_')}" for p, n in sgm.items()}
    row("kohya with CompVis/SGM UNet names (input_blocks…)", {by_path[k.split(".")[0]] + "." + k.split(".", 1)[1]: v for k, v in ko.items()})
    if family == "sdxl":
        ae = {"unet": {**adapters()["unet"], "add_embedding.linear_1": lora_for(mods["add_embedding.linear_1"], alpha=1.0)}}
        dsd, _ = from_canonical(ae, "diffusers")
        ko2 = {}
        for k, v in dsd.items():
            name, _, suffix = k.removeprefix("unet.").rpartition(".lora_")
            ko2[f"lora_unet_{name.replace('.', '_')}.lora_{suffix.replace('A.', 'down.').replace('B.', 'up.')}"] = v
        row("kohya with diffusers-derived names incl. add_embedding", ko2)
    for k in ("tucker", "loha", "lokr", "full", "dora"):
        row(f"kohya names with {k}", from_canonical(adapters(kinds=k), "kohya", family=family)[0])
    d_sd, _ = from_canonical(adapters(kinds="dora-all"), "diffusers")
    row("PEFT DoRA (lora_magnitude_vector) on every UNet module", d_sd)
    d_sd, _ = from_canonical(adapters(kinds="dora"), "diffusers")
    row("PEFT DoRA on some modules, plain LoRA on others", d_sd)
    ly = {("lycoris_" + k.removeprefix("lora_unet_")): v for k, v in from_canonical({"unet": adapters()["unet"]}, "kohya", family=family)[0].items()}
    row("lycoris_ prefix", ly)
    emb = dict(from_canonical(adapters(), "kohya", family=family)[0])
    emb["bundle_emb.tok.string_to_param.*"] = rnd(1, 32)
    row("kohya + bundle_emb textual inversion", emb)
    only_q = {k: v for k, v in from_canonical(adapters(), "kohya", family=family)[0].items() if "lora_unet" in k or "q_proj" in k}
    row("kohya TE with q_proj only (no out_proj)", only_q)
    return rows


def sd3_cases():
    pipe = tiny_pipeline("sd3", with_t5=False)
    tr = pipe.transformer
    mods = dict(tr.named_modules())
    factory = lambda: tiny_pipeline("sd3", with_t5=False)  # noqa: E731
    comps = lambda p: {"transformer": p.transformer, "text_encoder": p.text_encoder}  # noqa: E731
    rows = []
    ad = {p: lora_for(mods[p], alpha=1.0) for p in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.2", "proj_out")}
    sd, meta = from_canonical({"transformer": ad}, "diffusers")
    rows.append(("diffusers PEFT-style transformer.", classify(factory, "sd3", sd, None, comps)))
    ot, _ = from_canonical({"transformer": ad}, "kohya")
    rows.append(("OneTrainer lora_transformer_", classify(factory, "sd3", ot, None, comps)))
    q = ad["transformer_blocks.0.attn.to_q"]
    d = q.up.shape[0]
    sai = {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": q.down,
           "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": torch.cat([q.up, rnd(d, 2), rnd(d, 2)]),
           "lora_unet_joint_blocks_0_x_block_attn_qkv.alpha": torch.tensor(1.0),
           "lora_unet_final_layer_linear.lora_down.weight": ad["proj_out"].down,
           "lora_unet_final_layer_linear.lora_up.weight": ad["proj_out"].up}
    rows.append(("kohya sd-scripts lora_unet_joint_blocks_ (fused qkv)", classify(factory, "sd3", sai, None, comps)))
    pk = {k.replace("lora_A.weight", "lora_down.weight").replace("lora_B.weight", "lora_up.weight"): v for k, v in sd.items()}
    rows.append(("transformer.* with kohya suffixes (lora_down)", classify(factory, "sd3", pk, None, comps)))
    return rows


if __name__ == "__main__":
    import diffusers

    print(f"diffusers {diffusers.__version__}\n")
    print("| family | layout | diffusers `load_lora_weights` |\n|---|---|---|")
    for fam in ("sd1", "sdxl"):
        for name, res in sd_cases(fam):
            print(f"| {fam} | {name} | {res} |", flush=True)
    for name, res in sd3_cases():
        print(f"| sd3 | {name} | {res} |", flush=True)
    pipe = tiny_pipeline("amused")
    print(f"| amused | any | {'has load_lora_weights' if hasattr(pipe, 'load_lora_weights') else 'error: AttributeError (AmusedPipeline has no load_lora_weights)'} |")
