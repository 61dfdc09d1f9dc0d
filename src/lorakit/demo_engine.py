"""A small end-to-end run of the adapter engine on a tiny seeded model (no download, no pipeline)."""

from __future__ import annotations

import time

import torch
from torch import nn

from .kinds import DoRA, LoHa, LoKr, LoRA
from .manager import AdapterManager


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 32), nn.Linear(32, 16))


def main() -> int:
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 4, 8, 8)
    base = model(x)
    mgr = AdapterManager(model)
    g = torch.Generator().manual_seed(1)

    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g) * 0.1

    t0 = time.perf_counter()
    mgr.add_adapter("locon", {"0": LoRA(down=r(2, 4, 3, 3), up=r(8, 2, 1, 1), alpha=1.0), "3": LoRA(r(4, 32), r(16, 4))})
    mgr.add_adapter("loha", {"2": LoHa(r(32, 2), r(2, 512), r(32, 2), r(2, 512), alpha=2.0)})
    mgr.add_adapter("lokr_dora", {"3": DoRA(LoKr(w1=r(4, 4), w2=r(4, 8)), model[3].weight.norm(dim=1) * 1.1)})
    print(f"attached 3 adapters (LoCon, LoHa, LoKr+DoRA) in {1e3 * (time.perf_counter() - t0):.2f} ms")
    mgr.set_adapters(["locon", "loha", "lokr_dora"], [0.8, 0.5, 1.0])
    unfused = model(x)
    print(f"unfused output moved by {(unfused - base).abs().max():.4f} from the base")
    mgr.fuse()
    fused = model(x)
    print(f"fused vs unfused: max |diff| = {(fused - unfused).abs().max():.2e}")
    mgr.unfuse()
    exact = all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    print(f"unfuse restored every weight bit for bit: {exact}")
    mgr.unload()
    same = torch.equal(model(x), base)
    print(f"after unload the output is bit-identical to the base: {same}")
    return 0 if exact and same else 1


if __name__ == "__main__":
    raise SystemExit(main())
