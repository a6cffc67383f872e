"""Perplexity as transformers computes it: each window's mean next-token loss from
`model(input_ids, labels=input_ids)` (labels shifted inside the model), times its predicted
tokens, summed; perplexity = exp(total NLL / predicted tokens).

usage: decoder_perplexity.py MODEL_DIR IN.json OUT.json
IN.json: {"windows": [[token ids], ...]}. OUT.json: {"nll": [per window], "perplexity": x}.
The model must load with no missing, unexpected or mismatched weight (exit 3 otherwise).
"""
import json
import math
import sys

import torch
from transformers import AutoModelForCausalLM

torch.set_num_threads(2)
model_dir, inp, out = sys.argv[1:4]
windows = json.load(open(inp))["windows"]
model, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, output_loading_info=True)
problems = {k: list(v) for k, v in info.items() if v}
if problems:
    print(json.dumps({"model": model_dir, "loading": problems}), file=sys.stderr)
    sys.exit(3)
model.eval()
nll, predicted = [], 0
with torch.no_grad():
    for w in windows:
        ids = torch.tensor([w], dtype=torch.long)
        loss = model(input_ids=ids, labels=ids).loss.double().item()
        nll.append(loss * (len(w) - 1))
        predicted += len(w) - 1
json.dump({"nll": nll, "perplexity": math.exp(sum(nll) / predicted)}, open(out, "w"))
