"""Random, malformed checkpoints: to_canonical / from_canonical raise only lorakit errors (never a bare exception)."""

from __future__ import annotations

import pytest
import torch
from formats_models import tiny_clip, tiny_sd3, tiny_unet

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
    ".on_input", ".weight", ".w_norm",
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


@pytest.fixture(scope="module")
def targets():
    return [{"unet": tiny_unet("sd1"), "text_encoder": tiny_clip()}, {"transformer": tiny_sd3()}]


def test_malformed_checkpoints_raise_only_lorakit_errors(targets):
    @hypothesis.settings(max_examples=150, deadline=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(st.lists(ENTRY, max_size=8), META, st.integers(0, 1))
    def run(entries, meta, which):
        sd = {n + s: (torch.randn(tuple(sh)) if dt.is_floating_point else torch.zeros(tuple(sh), dtype=dt)).to(dt)
              for n, s, sh, dt in entries}
        comps = targets[which]
        try:
            conv = to_canonical(sd, meta, comps)
            for layout in ("diffusers", "kohya"):
                out, header = from_canonical(conv.adapters, layout)
                to_canonical(out, header, comps)
        except LorakitError:
            pass

    run()
