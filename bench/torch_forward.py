"""PyTorch (transformers AutoModel, eager, inference_mode, 2 threads) forward throughput on the
batch written by bench/forward.rs (SECATEUR_BENCH_INPUT); median over runs after a warm-up.
Usage: torch_forward.py INPUT.json RUNS DIR=LABEL [DIR=LABEL ...]

`load_batch` and `median_forward_ms` also serve bench/torch_int8.py."""
import json
import statistics
import sys
import time

import torch
from transformers import AutoModel


def load_batch(path):
    """The batch file's (shape, inputs): input_ids, attention_mask and token_type_ids tensors."""
    batch = json.load(open(path))
    shape = (batch["batch"], batch["seq"])
    return shape, {k: torch.tensor(batch[k]).reshape(shape) for k in ("input_ids", "attention_mask", "token_type_ids")}


def median_forward_ms(model, inputs, runs):
    """Median wall time (ms) of `runs` forwards of `model` on `inputs`, after one warm-up."""
    with torch.inference_mode():
        model(**inputs)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            model(**inputs)
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


if __name__ == "__main__":
    torch.set_num_threads(2)
    shape, inputs = load_batch(sys.argv[1])
    runs = int(sys.argv[2])
    real = float(inputs["attention_mask"].float().mean())
    for spec in sys.argv[3:]:
        path, label = spec.split("=")
        ms = median_forward_ms(AutoModel.from_pretrained(path).eval(), inputs, runs)
        print(f"{label}\ttorch_forward_ms={ms:.1f}\tseq_per_s={shape[0] * 1e3 / ms:.2f}\treal_tokens={real:.3f}\truns={runs}\tthreads={torch.get_num_threads()}")
