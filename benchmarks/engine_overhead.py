"""Forward-time overhead of 0/1/3 unfused adapters relative to the fused model (engine only, no pipeline).

SD-like attention projections: 16 Linear(640, 640) layers on 2×1024 tokens, rank-32 LoRAs. Prints minima over
interleaved repeats. Usage: python benchmarks/engine_overhead.py [--repeats N]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from lorakit.engine import AdapterManager
from lorakit.kinds import LoRA


def build(depth: int = 16, width: int = 640) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])


def lora(model: nn.Module, seed: int, rank: int = 32) -> dict[str, LoRA]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in model.named_children():
        out[name] = LoRA(torch.randn(rank, m.in_features, generator=g) * 0.01, torch.randn(m.out_features, rank, generator=g) * 0.01)
    return out


def timeit(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    model = build()
    x = torch.randn(2, 1024, 640)
    mgr = AdapterManager(model)
    for i, n in enumerate("abc"):
        mgr.add_adapter(n, lora(model, i))

    def run() -> None:
        with torch.no_grad():
            model(x)

    def cfg(strategy: str, names: list[str]):
        def setup() -> None:
            mgr.set_unfused_strategy(strategy)
            mgr.set_adapters(names, [0.5, 0.3, 0.2][: len(names)])

        return setup

    configs = {
        "base (no active adapter)": cfg("lowrank", []),
        "1 unfused, lowrank": cfg("lowrank", ["a"]),
        "3 unfused, lowrank": cfg("lowrank", ["a", "b", "c"]),
        "1 unfused, merged": cfg("merged", ["a"]),
        "3 unfused, merged": cfg("merged", ["a", "b", "c"]),
    }
    times = {k: float("inf") for k in configs}
    for _ in range(args.repeats):  # interleave configurations, keep minima
        for k, setup in configs.items():
            setup()
            run()  # rebuild the combined cache outside the timing
            times[k] = min(times[k], timeit(run, 3))
    mgr.set_unfused_strategy("lowrank")
    mgr.set_adapters(["a", "b", "c"], [0.5, 0.3, 0.2])
    mgr.fuse()
    fused = timeit(run, 3 * args.repeats)
    mgr.unfuse()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"fused (3 adapters): {fused * 1e3:.1f} ms")
    for k, t in times.items():
        print(f"{k}: {t * 1e3:.1f} ms  (overhead vs fused {100 * (t / fused - 1):+.1f}%)")
    base = times["base (no active adapter)"]
    for strategy in ("lowrank", "merged"):
        o1 = times[f"1 unfused, {strategy}"] - base
        o3 = times[f"3 unfused, {strategy}"] - base
        print(
            f"{strategy}: time(3)/time(1) = {times[f'3 unfused, {strategy}'] / times[f'1 unfused, {strategy}']:.3f}; "
            f"overhead over the base layer: 1 adapter {1e3 * o1:.1f} ms, 3 adapters {1e3 * o3:.1f} ms"
        )


if __name__ == "__main__":
    main()
