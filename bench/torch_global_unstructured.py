"""torch.nn.utils.prune.global_unstructured (L1, 50%) over the encoder linear weights of each
safetensors file given, 2 threads; prints the median of 7 runs per file (ms)."""
import re
import statistics
import sys
import time

import torch
from safetensors.torch import load_file
from torch.nn.utils import prune

torch.set_num_threads(2)
LINEAR = re.compile(r"(^|\.)encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)\.weight$")

for path, label in zip(sys.argv[1::2], sys.argv[2::2]):
    weights = {k: v for k, v in load_file(path).items() if LINEAR.search(k)}
    times = []
    for _ in range(7):
        modules = []
        for w in weights.values():
            m = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            with torch.no_grad():
                m.weight.copy_(w)
            modules.append((m, "weight"))
        t = time.perf_counter()
        prune.global_unstructured(modules, pruning_method=prune.L1Unstructured, amount=0.5)
        times.append((time.perf_counter() - t) * 1e3)
    n = sum(w.numel() for w in weights.values())
    print(f"{label}\tweights={n}\ttorch_global_unstructured_ms={statistics.median(times):.2f}")
