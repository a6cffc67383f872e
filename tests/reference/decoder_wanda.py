"""Wanda on a decoder as the paper's code runs it (lib/prune.py of locuslab/wanda, prune_wanda):
block by block, hooks on the block's linear maps accumulate the squared L2 norm of each input
feature over the calibration tokens as they come out of the blocks already pruned (the block
itself still dense); metric = |W| * sqrt(that) over the [out, in] weight (GPT-2's Conv1D weights,
stored [in, out], transposed); in each output row the int(in * sparsity) smallest (stable sort)
are set to zero before the next block is calibrated.

usage: decoder_wanda.py MODEL_DIR IN.json OUT.json
IN.json: {"windows": [[token ids], ...] (equal lengths), "sparsity": 0.5}.
OUT.json: {tensor name: [[0/1 per weight of the stored tensor, 1 = pruned], ...]}.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

torch.set_num_threads(2)
model_dir, inp, out = sys.argv[1:4]
spec = json.load(open(inp))
ids = torch.tensor(spec["windows"], dtype=torch.long)
sparsity = spec["sparsity"]
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
base = model.base_model
blocks, prefix = (base.h, "transformer.h") if hasattr(base, "h") else (base.layers, "model.layers")
masks = {}
for l, block in enumerate(blocks):
    linears = {n: m for n, m in block.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    sums, hooks = {}, []
    for n, m in linears.items():
        def hook(module, inputs, output, n=n):
            x = inputs[0].detach().double().reshape(-1, inputs[0].shape[-1])
            sums[n] = sums.get(n, 0) + (x * x).sum(dim=0)
        hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    for h in hooks:
        h.remove()
    for n, m in linears.items():
        conv = isinstance(m, Conv1D)
        W = m.weight.detach().double()
        W = W.t() if conv else W
        metric = W.abs() * torch.sqrt(sums[n]).reshape(1, -1)
        mask = torch.zeros_like(W, dtype=torch.bool)
        idx = torch.sort(metric, dim=-1, stable=True)[1][:, : int(W.shape[1] * sparsity)]
        mask.scatter_(1, idx, True)
        with torch.no_grad():
            stored = mask.t() if conv else mask
            m.weight[stored] = 0
        masks[f"{prefix}.{l}.{n}.weight"] = stored.to(torch.uint8).tolist()
json.dump(masks, open(out, "w"))
