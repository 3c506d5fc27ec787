"""Runs the PyTorch reference (../shared/reference/torch_mlp.py) unchanged, and also times every step.

The reference prints only a mean over its steps; a benchmark of medians needs each step. A global
optimizer hook (torch.optim.optimizer.register_optimizer_step_post_hook) notes when every Adam step ends:
the time between two consecutive ends is one whole step (batch slicing, forward, backward, Adam), the
span that dtrain's metrics.jsonl records per step. Prints the reference's JSON line with
"step_ms_median" and "step_ms" (every step, for callers that leave a warm-up out) added.

usage: python torch_step_times.py REFERENCE_SCRIPT [its arguments...]
"""
import contextlib
import io
import json
import runpy
import statistics
import sys
import time

from torch.optim.optimizer import register_optimizer_step_post_hook

ends = []
register_optimizer_step_post_hook(lambda optimizer, args, kwargs: ends.append(time.perf_counter()))

script = sys.argv[1]
sys.argv = sys.argv[1:]
output = io.StringIO()
with contextlib.redirect_stdout(output):
    runpy.run_path(script, run_name="__main__")
result = json.loads(output.getvalue().strip().splitlines()[-1])
step_ms = [1000 * (b - a) for a, b in zip(ends, ends[1:])]
result["step_ms_median"] = statistics.median(step_ms) if step_ms else None
result["step_ms"] = [round(ms, 4) for ms in step_ms]
print(json.dumps(result))
