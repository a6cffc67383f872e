"""PyTorch (transformers AutoModelForSequenceClassification, eager, train mode with dropout,
2 threads) training-step throughput on the batch written by bench/train_step.rs: forward with
labels, backward, gradient clipping at 1.0, AdamW (lr 5e-5, weight decay 0.01). Median over
runs after a warm-up step, with the median forward, backward and optimizer times and the peak
resident memory of the process.
Usage: torch_train.py INPUT.json RUNS MODEL_DIR"""
import json
import resource
import statistics
import sys
import time

import torch
from transformers import AutoModelForSequenceClassification

torch.set_num_threads(2)
torch.manual_seed(42)
batch = json.load(open(sys.argv[1]))
runs = int(sys.argv[2])
shape = (batch["batch"], batch["seq"])
inputs = {k: torch.tensor(batch[k]).reshape(shape) for k in ("input_ids", "attention_mask", "token_type_ids")}
labels = torch.tensor(batch["labels"])
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[3], num_labels=2)
model.train()
decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=5e-5)
fw, bw, st, total = [], [], [], []
for i in range(runs + 1):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = model(**inputs, labels=labels).loss
    t1 = time.perf_counter()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    t2 = time.perf_counter()
    opt.step()
    t3 = time.perf_counter()
    if i > 0:
        fw.append((t1 - t0) * 1e3)
        bw.append((t2 - t1) * 1e3)
        st.append((t3 - t2) * 1e3)
        total.append((t3 - t0) * 1e3)
ms = statistics.median(total)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"torch\tstep_ms={ms:.1f}\tseq_per_s={shape[0] * 1e3 / ms:.2f}\tforward_ms={statistics.median(fw):.1f}\tbackward_ms={statistics.median(bw):.1f}\toptimizer_ms={statistics.median(st):.1f}\tpeak_rss_mb={peak:.0f}\tloss={loss.item():.4f}\truns={runs}\tthreads={torch.get_num_threads()}")
