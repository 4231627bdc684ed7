"""The runner room: a run from configuration to record (torchtune's recipe, read end to end in recipe.py).

    recipe.py      run and build_context: load -> evaluate zero-shot -> per stage train, evaluate, checkpoint
                   -> record
    context.py     RunContext, what a strategy's hooks see (exported through benchmark.api)
    loop.py        train_stage: batches, accumulation windows, the answer loss, the strategy's hooks
    evaluate.py    one evaluation of every task and its prediction lines
    general.py     general ability: corpus perplexity and lm-evaluation-harness tasks (MMLU from a local file)
    engines.py     distribution engines (DDP, FSDP, DeepSpeed) and what each strategy may run under
    loggers.py     none / wandb
    checkpoint.py  per-stage checkpoints (safetensors + JSON) for resume
    lock.py        one process per run
    preflight.py   the machine checks before anything loads
"""
from benchmark.runner.recipe import build_context, run  # noqa: F401
