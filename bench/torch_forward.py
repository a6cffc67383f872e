"""PyTorch (transformers AutoModel, eager, inference_mode, 2 threads) forward throughput on the
batch written by bench/forward.rs (SECATEUR_BENCH_INPUT); median over runs after a warm-up.
Usage: torch_forward.py INPUT.json RUNS DIR=LABEL [DIR=LABEL ...]"""
import json
import statistics
import sys
import time

import torch
from transformers import AutoModel

torch.set_num_threads(2)
batch = json.load(open(sys.argv[1]))
runs = int(sys.argv[2])
shape = (batch["batch"], batch["seq"])
inputs = {k: torch.tensor(batch[k]).reshape(shape) for k in ("input_ids", "attention_mask", "token_type_ids")}
real = float(inputs["attention_mask"].float().mean())
for spec in sys.argv[3:]:
    path, label = spec.split("=")
    model = AutoModel.from_pretrained(path).eval()
    with torch.inference_mode():
        model(**inputs)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            model(**inputs)
            times.append((time.perf_counter() - t) * 1e3)
    ms = statistics.median(times)
    print(f"{label}\ttorch_forward_ms={ms:.1f}\tseq_per_s={shape[0] * 1e3 / ms:.2f}\treal_tokens={real:.3f}\truns={runs}\tthreads={torch.get_num_threads()}")
