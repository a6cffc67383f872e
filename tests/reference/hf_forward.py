"""Last hidden state of Hugging Face transformers' AutoModel, for the interoperability tests.

usage: hf_forward.py INPUTS.safetensors MODEL_DIR OUT.safetensors [MODEL_DIR OUT.safetensors ...]

INPUTS holds input_ids, attention_mask and token_type_ids. Each model must load with
AutoModel.from_pretrained as it is: no custom code, no ignore_mismatched_sizes, and no missing,
unexpected or mismatched weights (exit status 3 otherwise, with the details on stderr).
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

torch.set_num_threads(2)
inputs = load_file(sys.argv[1])
pairs = sys.argv[2:]
for model_dir, out in zip(pairs[0::2], pairs[1::2]):
    model, info = AutoModel.from_pretrained(model_dir, output_loading_info=True)
    problems = {k: list(v) for k, v in info.items() if v}
    if problems:
        print(json.dumps({"model": model_dir, "loading": problems}), file=sys.stderr)
        sys.exit(3)
    model.eval()
    kwargs = {"input_ids": inputs["input_ids"].long(), "attention_mask": inputs["attention_mask"].long()}
    if model.config.model_type != "distilbert":
        kwargs["token_type_ids"] = inputs["token_type_ids"].long()
    with torch.no_grad():
        hidden = model(**kwargs).last_hidden_state
    save_file({"last_hidden_state": hidden.contiguous()}, out)
