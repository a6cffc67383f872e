"""A few training steps of a Hugging Face task model, for the training-loop test.

usage: train_steps.py BATCHES.safetensors MODEL_DIR CONFIG.json OUT.safetensors

BATCHES holds, for step s = 0, 1, ...: input_ids_s, attention_mask_s, token_type_ids_s, labels_s
(one micro-batch per step). CONFIG: {"lr", "warmup", "total", "weight_decay", "max_grad_norm"}.
Dropout off (eval mode) so that the run is deterministic; AdamW with weight decay except on
biases and LayerNorm weights, get_linear_schedule_with_warmup, clip_grad_norm_. OUT gets every
parameter after the last step under its Hugging Face name.
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

torch.set_num_threads(2)
batches = load_file(sys.argv[1])
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[2])
cfg = json.load(open(sys.argv[3]))
model.eval()
named = list(model.named_parameters())
no_decay = lambda n: n.endswith("bias") or "LayerNorm" in n
groups = [
    {"params": [p for n, p in named if not no_decay(n)], "weight_decay": cfg["weight_decay"]},
    {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0},
]
opt = torch.optim.AdamW(groups, lr=cfg["lr"])
sched = get_linear_schedule_with_warmup(opt, cfg["warmup"], cfg["total"])
steps = len([k for k in batches if k.startswith("labels_")])
for s in range(steps):
    opt.zero_grad()
    out = model(input_ids=batches[f"input_ids_{s}"].long(), attention_mask=batches[f"attention_mask_{s}"].long(),
                token_type_ids=batches[f"token_type_ids_{s}"].long(), labels=batches[f"labels_{s}"].long())
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
    opt.step()
    sched.step()
save_file({n: p.detach().contiguous() for n, p in named}, sys.argv[4])
