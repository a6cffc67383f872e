"""Outputs of Hugging Face transformers models, for the interoperability tests.

usage: hf_outputs.py INPUTS.safetensors MODEL_DIR KIND OUT.safetensors [MODEL_DIR KIND OUT ...]

INPUTS holds input_ids, attention_mask and token_type_ids. KIND is `base` (AutoModel:
last_hidden_state), `classification` (AutoModelForSequenceClassification: logits) or `qa`
(AutoModelForQuestionAnswering: start_logits, end_logits). Each model must load with
from_pretrained as it is: no custom code, no ignore_mismatched_sizes, and no missing,
unexpected or mismatched weights (exit status 3 otherwise, with the details on stderr).
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

CLASSES = {"base": AutoModel, "classification": AutoModelForSequenceClassification, "qa": AutoModelForQuestionAnswering}

torch.set_num_threads(2)
inputs = load_file(sys.argv[1])
rest = sys.argv[2:]
for model_dir, kind, out in zip(rest[0::3], rest[1::3], rest[2::3]):
    model, info = CLASSES[kind].from_pretrained(model_dir, output_loading_info=True)
    problems = {k: list(v) for k, v in info.items() if v}
    if problems:
        print(json.dumps({"model": model_dir, "loading": problems}), file=sys.stderr)
        sys.exit(3)
    model.eval()
    kwargs = {"input_ids": inputs["input_ids"].long(), "attention_mask": inputs["attention_mask"].long()}
    if model.config.model_type != "distilbert":
        kwargs["token_type_ids"] = inputs["token_type_ids"].long()
    with torch.no_grad():
        o = model(**kwargs)
    names = {"base": ["last_hidden_state"], "classification": ["logits"], "qa": ["start_logits", "end_logits"]}[kind]
    save_file({n: getattr(o, n).contiguous() for n in names}, out)
