"""The tiny Flux.1 pipeline of lorakit.tiny: seeded, offline, and it runs end to end."""

from __future__ import annotations

import pytest
import torch

from lorakit.tiny import FAMILIES, PENDING_TASKS, TASKS, tiny_components, tiny_pipeline


def test_tiny_flux_runs_and_is_dev_like() -> None:
    pipe = tiny_pipeline("flux")
    assert type(pipe).__name__ == "FluxPipeline"
    t = pipe.transformer
    assert (len(t.transformer_blocks), len(t.single_transformer_blocks)) == (2, 2)
    assert t.config.guidance_embeds and t.config.in_channels == 4 * pipe.vae.config.latent_channels == 64
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert type(pipe.text_encoder_2).__name__ == "T5EncoderModel"
    out = pipe("a cat", num_inference_steps=2, height=32, width=32, output_type="np").images
    assert out.shape == (1, 32, 32, 3) and bool(torch.isfinite(torch.from_numpy(out)).all())


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_tiny_flux_tasks(task: str) -> None:
    pipe = tiny_pipeline("flux", task=task)
    assert type(pipe).__name__ == TASKS["flux"][task]
    kw = {"image": torch.rand(1, 3, 32, 32), "strength": 0.8}
    if task == "inpaint":
        kw["mask_image"] = torch.ones(1, 1, 32, 32)
    out = pipe("a cat", num_inference_steps=2, height=32, width=32, output_type="latent", **kw).images
    assert out.shape[0] == 1


def test_tiny_flux_is_seeded_and_listed() -> None:
    torch.manual_seed(7)
    state = torch.random.get_rng_state()
    a, b, c = (tiny_components("flux", seed=s)["transformer"] for s in (1, 1, 2))
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    assert not torch.equal(a.x_embedder.weight, c.x_embedder.weight)
    assert "flux" in FAMILIES and set(TASKS["flux"]) == {"text2img", "img2img", "inpaint"} and "flux" not in PENDING_TASKS
