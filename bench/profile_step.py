"""Where a training step's time goes: torch.profiler's operator table and cProfile's Python functions.

    python bench/profile_step.py                          # SmolLM2-135M, seq_lora, 6 profiled steps
    python bench/profile_step.py --model tiny --strategy migu --steps 20

The strategy trains an untimed first task, then the second task's steps are profiled, so that buffers, masks
and frozen adapters are live (as in bench/perf.py). Use it before and after a change to the hot path.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf  # noqa: E402  (bench/perf.py: the shared set-up)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--strategy", default="seq_lora")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--top", type=int, default=20)
    a = p.parse_args(argv)
    from torch.profiler import ProfilerActivity, profile

    from benchmark.runner.loop import train_stage

    args = argparse.Namespace(model=a.model, steps=a.steps, warmup=2, batch_size=a.batch_size, test_per_class=1)
    ctx, strat, timed = perf.at_second_task(args, a.strategy)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.device.type == "cuda" else [])
    py = cProfile.Profile()
    with profile(activities=acts, profile_memory=False) as prof:
        py.enable()
        train_stage(ctx, strat, timed)
        py.disable()
    sort = "self_cuda_time_total" if ctx.device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=a.top))
    buf = io.StringIO()
    pstats.Stats(py, stream=buf).sort_stats("tottime").print_stats(a.top)
    print(buf.getvalue())


if __name__ == "__main__":
    main()
