"""Random checkpoints, malformed and valid.

* Malformed: to_canonical / from_canonical raise only lorakit errors (a bug in lorakit surfaces as itself, never
  hidden behind a FormatError), and whatever converts accounts for every key exactly once (matched or skipped).
* Valid: random adapters (LoRA, LoCon, LoHa, LoKr, full, DoRA) on random modules of tiny SD1 / SD3 models, written in
  random layouts by the key rules below (independent of lorakit's writer), must land completely, each on its module,
  with the delta of the formula below; and survive a round trip through every layout lorakit writes. A converter that
  drops, misplaces or mis-scales a key fails here.
"""

from __future__ import annotations

import pytest
import torch
from formats_models import tiny_clip, tiny_sd3, tiny_unet
from torch import nn

from lorakit.errors import LorakitError
from lorakit.formats import from_canonical, to_canonical

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

NAMES = [
    "lora_unet_down_blocks_0_attentions_0_proj_in",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "lora_te_text_model_encoder_layers_0_mlp_fc1",
    "lora_unet_joint_blocks_0_x_block_attn_qkv",
    "lora_unet_joint_blocks_1_context_block_adaLN_modulation_1",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q",
    "base_model.model.conv_in",
    "lycoris_conv_in",
    "bundle_emb.tok",
    "x",
]
SUFFIXES = [
    ".lora_down.weight", ".lora_up.weight", ".lora_mid.weight", ".alpha", ".dora_scale", ".hada_w1_a", ".hada_w1_b",
    ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2", ".lokr_w1", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2", ".lokr_w2_a",
    ".lokr_w2_b", ".lokr_t2", ".diff", ".diff_b", ".lora_A.weight", ".lora_B.weight", ".lora_B.bias",
    ".lora_magnitude_vector", "_lora.down.weight", "_lora.up.weight", ".lora.down.weight", ".scale", ".oft_blocks",
    ".on_input", ".weight", ".w_norm", ".a1.weight", ".rescale", ".lora_up.bias",
]
META = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["lora_adapter_metadata", "ss_network_alpha", "ss_network_args", "adapter_config", "lora_alpha"]),
        st.one_of(st.text(max_size=12), st.sampled_from(
            ['{"unet.lora_alpha": "x", "unet.alpha_pattern": {"(": 1}}', '{"alpha_pattern": [1]}', '"3"', "null",
             '{"split_qkv": "True"}', '{"transformer.use_rslora": true, "transformer.lora_alpha": 2}'])),
        max_size=3,
    ),
)
ENTRY = st.tuples(
    st.sampled_from(NAMES),
    st.sampled_from(SUFFIXES),
    st.lists(st.integers(0, 9), max_size=4),
    st.sampled_from([torch.float32, torch.float16, torch.int64]),
)
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(hypothesis.HealthCheck))


@pytest.fixture(scope="module")
def targets():
    return [{"unet": tiny_unet("sd1"), "text_encoder": tiny_clip()}, {"transformer": tiny_sd3()}]


def assert_accounted(conv, sd: dict) -> None:
    """Every key of the file is matched or skipped, once: nothing vanishes, nothing is counted twice."""
    rep = conv.report
    skipped = [s.key for s in rep.skipped]
    assert len(skipped) == len(set(skipped)), "a key is reported twice"
    assert set(skipped) <= set(sd), "a skipped key is not in the file"
    assert rep.total_keys == len(sd)
    assert rep.matched_keys + len(skipped) == len(sd), rep.summary()


def test_malformed_checkpoints_raise_only_lorakit_errors(targets):
    @hypothesis.settings(max_examples=150, **SETTINGS)
    @hypothesis.given(st.lists(ENTRY, max_size=8), META, st.integers(0, 1))
    def run(entries, meta, which):
        sd = {n + s: (torch.randn(tuple(sh)) if dt.is_floating_point else torch.zeros(tuple(sh), dtype=dt)).to(dt)
              for n, s, sh, dt in entries}
        comps = targets[which]
        try:
            conv = to_canonical(sd, meta, comps)
        except LorakitError:
            return
        assert_accounted(conv, sd)
        for layout in ("diffusers", "kohya"):
            try:
                out, header = from_canonical(conv.adapters, layout)
            except LorakitError:
                continue
            try:
                to_canonical(out, header, comps)
            except LorakitError:
                pass

    run()


# ------------------------------------------------------------------------------------------------ valid files
def ref_delta(kind: str, t: dict[str, torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    """The weight delta of one module by the published formulas (formats.md §4), in fp64, shaped like ``base``."""
    d = {k: v.double() for k, v in t.items()}
    shape = base.shape
    alpha = float(d["alpha"]) if "alpha" in d else None
    if kind in ("lora", "dora"):
        r = d["down"].shape[0]
        delta = (1.0 if alpha is None else alpha / r) * (d["up"].flatten(1) @ d["down"].flatten(1))
        delta = delta.reshape(shape)
        if kind == "lora":
            return delta
        v = base.double() + delta  # DoRA, output axis: W' = m · V / ‖V‖ per output row (eps as LyCORIS)
        norm = v.flatten(1).norm(dim=1).reshape(-1, *[1] * (v.dim() - 1)) + torch.finfo(torch.float32).eps
        return d["magnitude"].reshape(norm.shape) * v / norm - base.double()
    if kind == "loha":
        r = d["w1b"].shape[0]
        return ((1.0 if alpha is None else alpha / r) * (d["w1a"] @ d["w1b"]) * (d["w2a"] @ d["w2b"])).reshape(shape)
    if kind == "lokr":  # w1 full, w2 = w2a @ w2b (rank r) or full (scale 1): ΔW[a·ok + o, b·in + i] = w1[a,b]·w2[o,i]
        w1 = d["w1"]
        w2 = d["w2a"] @ d["w2b"] if "w2a" in d else d["w2"].flatten(1)
        scale = alpha / d["w2b"].shape[0] if ("w2b" in d and alpha is not None) else 1.0
        ok, kin = w2.shape
        out = torch.zeros(w1.shape[0] * ok, w1.shape[1] * kin, dtype=torch.float64)
        for a in range(w1.shape[0]):
            for b in range(w1.shape[1]):
                out[a * ok : (a + 1) * ok, b * kin : (b + 1) * kin] = w1[a, b] * w2
        return (scale * out).reshape(shape)
    assert kind == "full"
    return d["diff"].reshape(shape)


def _divisor(n: int, g: torch.Generator) -> int:
    ds = [k for k in range(2, n + 1) if n % k == 0 and k < n] or [1]
    return ds[int(torch.randint(len(ds), (1,), generator=g))]


def make_adapter(kind: str, shape: torch.Size, alpha: float | None, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random canonical tensors (by role name of the formula above) fitting a weight of ``shape``."""
    out, inn = shape[0], shape[1]
    kk = shape[2:] if len(shape) == 4 else ()
    r = int(torch.randint(1, 4, (1,), generator=g))

    def rnd(*s: int) -> torch.Tensor:
        return torch.randn(s, generator=g) * 0.3

    t: dict[str, torch.Tensor]
    if kind in ("lora", "dora"):
        t = {"down": rnd(r, inn, *kk), "up": rnd(out, r, *((1, 1) if kk else ()))}
        if kind == "dora":
            t["magnitude"] = torch.rand(out, generator=g) + 0.5
    elif kind == "loha":
        rest = torch.Size(shape[1:]).numel()
        t = {"w1a": rnd(out, r), "w1b": rnd(r, rest), "w2a": rnd(out, r), "w2b": rnd(r, rest)}
    elif kind == "lokr":
        a, b = _divisor(out, g), _divisor(inn, g)
        t = {"w1": rnd(a, b)}
        if kk:
            t["w2"] = rnd(out // a, inn // b, *kk)
        else:
            t["w2a"], t["w2b"] = rnd(out // a, r), rnd(r, inn // b)
    else:
        t = {"diff": rnd(*shape) * 0.1}
    if alpha is not None and kind != "full":
        t["alpha"] = torch.tensor(alpha)
    return t


#: kohya / LyCORIS names of the canonical roles, and PEFT / diffusers-intermediate ones (no alpha in those files)
KOHYA_NAMES = {"down": "lora_down.weight", "up": "lora_up.weight", "magnitude": "dora_scale", "w1a": "hada_w1_a",
               "w1b": "hada_w1_b", "w2a": "hada_w2_a", "w2b": "hada_w2_b", "w1": "lokr_w1", "w2": "lokr_w2",
               "diff": "diff", "alpha": "alpha"}
KOHYA_LOKR = {"w2a": "lokr_w2_a", "w2b": "lokr_w2_b"}
PEFT_NAMES = {"down": "lora_A.weight", "up": "lora_B.weight", "magnitude": "lora_magnitude_vector"}
INTER_NAMES = {"down": "lora.down.weight", "up": "lora.up.weight"}


def file_keys(kind: str, t: dict[str, torch.Tensor], comp: str, path: str, style: str) -> dict[str, torch.Tensor]:
    """One module's keys in a layout: the module-name rules of kohya (``lora_unet_``/``lora_te_`` + the path with
    dots as underscores, transformers-4 CLIP paths), LyCORIS (``lycoris_``), diffusers (``<component>.<path>``)."""
    if style in ("peft", "intermediate"):
        names = PEFT_NAMES if style == "peft" else INTER_NAMES
        return {f"{comp}.{path}.{names[role]}": v for role, v in t.items()}
    if style == "dotted":
        base = f"{comp}.{path}"
    else:
        prefix = {"unet": "lora_unet_", "transformer": "lora_transformer_", "text_encoder": "lora_te_"}[comp]
        if style == "lycoris":
            prefix = "lycoris_"
        if comp == "text_encoder" and not path.startswith("text_model."):
            path = "text_model." + path
        base = prefix + path.replace(".", "_")
    out = {}
    for role, v in t.items():
        name = KOHYA_LOKR.get(role, KOHYA_NAMES[role]) if kind == "lokr" else KOHYA_NAMES[role]
        out[f"{base}.{name}"] = v.reshape(-1, 1) if role == "magnitude" else v
    return out


STYLES = {  # which styles can spell which kind (PEFT files carry no alpha tensors)
    "lora": ("kohya", "peft", "intermediate", "lycoris", "dotted"),
    "dora": ("kohya", "peft"),
    "loha": ("kohya", "lycoris", "dotted"),
    "lokr": ("kohya", "lycoris", "dotted"),
    "full": ("kohya", "dotted"),
}


def _modules(comps: dict[str, nn.Module]) -> list[tuple[str, str, nn.Module]]:
    out = []
    for comp, model in comps.items():
        for path, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and (comp != "text_encoder" or ".layers." in f".{path}"):
                out.append((comp, path, m))
    return out


PICK = st.lists(
    st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(STYLES)), st.integers(0, 4),
              st.sampled_from([None, 0.5, 1.0, 4.0])),
    min_size=1, max_size=6, unique_by=lambda e: e[0],
)


def _build_file(comps, picks, seed):
    mods = _modules(comps)
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    want: dict[tuple[str, str], tuple[str, dict[str, torch.Tensor]]] = {}
    for idx, kind, style_i, alpha in picks:
        comp, path, m = mods[idx % len(mods)]
        if (comp, path) in want:
            continue
        conv3 = isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
        if kind in ("loha", "dora") and isinstance(m, nn.Conv2d):
            kind = "lora"  # the formulas above cover LoHa / DoRA on Linear layers
        style = STYLES[kind][style_i % len(STYLES[kind])]
        if comp == "text_encoder" and style == "lycoris":
            style = "kohya"  # lycoris_ names the denoiser only
        if style in ("peft", "intermediate"):
            alpha = None
        if style == "intermediate" and conv3:
            style = "peft"
        t = make_adapter(kind, m.weight.shape, alpha, g)
        sd.update(file_keys(kind, t, comp, path, style))
        want[(comp, path)] = (kind, t)
    return sd, want


def _check_deltas(conv, comps, want) -> None:
    got = {(c, p) for c, mods in conv.adapters.items() for p in mods}
    assert got == set(want), f"landed on {sorted(got ^ set(want))}"
    for (comp, path), (kind, t) in want.items():
        base = comps[comp].get_submodule(path).weight.detach()
        lk = conv.adapters[comp][path]
        torch.testing.assert_close(lk.delta_weight(base).double(), ref_delta(kind, t, base), rtol=1e-5, atol=1e-6,
                                   msg=f"{comp}.{path} ({kind})")


@pytest.mark.parametrize("which", [0, 1], ids=["sd1", "sd3"])
def test_valid_files_land_completely_with_the_formula_deltas(targets, which):
    comps = targets[which]

    @hypothesis.settings(max_examples=40, **SETTINGS)
    @hypothesis.given(PICK, st.integers(0, 2**16))
    def run(picks, seed):
        sd, want = _build_file(comps, picks, seed)
        conv = to_canonical(sd, None, comps, strict=True)
        assert_accounted(conv, sd)
        assert conv.report.matched_keys == len(sd)
        _check_deltas(conv, comps, want)
        for layout in ("diffusers", "kohya", "peft"):
            groups = [{c: m} for c, m in conv.adapters.items()] if layout == "peft" else [conv.adapters]
            for group in groups:
                out, header = from_canonical(group, layout)
                back = to_canonical(out, header, {c: comps[c] for c in group}, strict=True)
                assert_accounted(back, out)
                _check_deltas(back, comps, {k: v for k, v in want.items() if k[0] in group})

    run()


# ------------------------------------------------------------------------------------------------ SD3 fused / swapped
def test_sd3_fused_and_swapped_names_split_rows_by_the_formula(targets):
    """SAI names on tiny SD3: a fused qkv delta's rows go to q, k, v in that order; the adaLN modulation of the last
    context block and of the final layer stores (shift, scale) where diffusers has (scale, shift)."""
    comps = targets[1]
    model = comps["transformer"]

    @hypothesis.settings(max_examples=25, **SETTINGS)
    @hypothesis.given(st.sampled_from(["lora", "loha", "lokr", "full", "dora"]), st.sampled_from([None, 1.0, 3.0]),
                      st.integers(0, 2**16))
    def run(kind, alpha, seed):
        g = torch.Generator().manual_seed(seed)
        entries = {
            "joint_blocks_0_x_block_attn_qkv": ("split", ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
                                                          "transformer_blocks.0.attn.to_v"]),
            "joint_blocks_1_context_block_attn_qkv": ("split", ["transformer_blocks.1.attn.add_q_proj",
                                                                "transformer_blocks.1.attn.add_k_proj",
                                                                "transformer_blocks.1.attn.add_v_proj"]),
            "joint_blocks_1_context_block_adaLN_modulation_1": ("swap", ["transformer_blocks.1.norm1_context.linear"]),
            "final_layer_adaLN_modulation_1": ("swap", ["norm_out.linear"]),
        }
        sd: dict[str, torch.Tensor] = {}
        expected: dict[str, torch.Tensor] = {}
        for name, (op, paths) in entries.items():
            weights = [model.get_submodule(p).weight.detach() for p in paths]
            if op == "split":
                file_base = torch.cat(weights)
            else:  # the file's rows are SAI's: (shift, scale) = diffusers' halves exchanged
                half = weights[0].shape[0] // 2
                file_base = torch.cat([weights[0][half:], weights[0][:half]])
            t = make_adapter(kind, file_base.shape, alpha, g)
            sd.update(file_keys(kind, t, "unet", name, "kohya"))
            delta = ref_delta(kind, t, file_base)
            if op == "split":
                rows = [w.shape[0] for w in weights]
                for p, part in zip(paths, torch.split(delta, rows)):
                    expected[p] = part
            else:
                half = delta.shape[0] // 2
                expected[paths[0]] = torch.cat([delta[half:], delta[:half]])
        conv = to_canonical(sd, None, comps, strict=True)
        assert_accounted(conv, sd)
        t_ = conv.adapters["transformer"]
        assert set(t_) == set(expected)
        for p, want in expected.items():
            base = model.get_submodule(p).weight.detach()
            torch.testing.assert_close(t_[p].delta_weight(base).double(), want, rtol=1e-5, atol=1e-6, msg=f"{p} ({kind})")

    run()
