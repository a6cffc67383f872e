"""torch.optim.AdamW + get_linear_schedule_with_warmup (as LambdaLR) + clip_grad_norm_ on the
parameters and gradients of tests/optim.rs; writes the parameters after every step.
Usage: adamw.py IN.json OUT.json"""
import json
import sys

import torch

torch.set_num_threads(1)
d = json.load(open(sys.argv[1]))
params = {n: torch.nn.Parameter(torch.tensor(v, dtype=torch.float32)) for n, v in d["params"].items()}
no_decay = [p for n, p in params.items() if n.endswith("bias") or "LayerNorm" in n]
decay = [p for n, p in params.items() if not (n.endswith("bias") or "LayerNorm" in n)]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": d["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}], lr=d["lr"], betas=(0.9, 0.999), eps=1e-8, foreach=False)
warmup, total = d["warmup"], d["total"]
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
out = []
for grads in d["grads"]:
    for n, p in params.items():
        p.grad = torch.tensor(grads[n], dtype=torch.float32)
    norm = torch.nn.utils.clip_grad_norm_(list(params.values()), d["max_norm"])
    opt.step()
    sched.step()
    out.append({"norm": float(norm), "params": {n: p.detach().tolist() for n, p in params.items()}})
json.dump(out, open(sys.argv[2], "w"))
