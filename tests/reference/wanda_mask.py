"""The Wanda rule computed directly in PyTorch, as the paper's code does it (lib/prune.py of
locuslab/wanda): hooks on every linear map of the encoder accumulate the squared L2 norm of
each input feature over the calibration tokens; metric = |W| * sqrt(that); in each output row
the int(in * sparsity) smallest (stable sort) are pruned.

usage: wanda_mask.py MODEL_DIR TOKENS.json SPARSITY OUT.safetensors
TOKENS.json: a list of token-id lists, each run as its own batch (no padding).
"""
import json
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModel

torch.set_num_threads(2)
model_dir, tokens_path, sparsity, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
model = AutoModel.from_pretrained(model_dir).eval()
sums = {}


def hook(name):
    def f(module, inputs, output):
        x = inputs[0].detach().double().reshape(-1, inputs[0].shape[-1])
        sums[name] = sums.get(name, 0) + (x * x).sum(dim=0)
    return f


linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("encoder.")}
for n, m in linears.items():
    m.register_forward_hook(hook(n))
with torch.no_grad():
    for ids in json.load(open(tokens_path)):
        t = torch.tensor([ids])
        model(input_ids=t, attention_mask=torch.ones_like(t), token_type_ids=torch.zeros_like(t))
masks = {}
for n, m in linears.items():
    W = m.weight.detach().double()
    metric = W.abs() * torch.sqrt(sums[n]).reshape(1, -1)
    mask = torch.zeros_like(W, dtype=torch.bool)
    idx = torch.sort(metric, dim=-1, stable=True)[1][:, : int(W.shape[1] * sparsity)]
    mask.scatter_(1, idx, True)
    masks[n + ".weight"] = mask.to(torch.uint8).contiguous()
save_file(masks, out)
