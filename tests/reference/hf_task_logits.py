"""Logits of Hugging Face task models, for tests/heads.rs.

usage: hf_task_logits.py INPUTS.safetensors MODEL_DIR KIND OUT.safetensors [MODEL_DIR KIND OUT ...]

KIND is `classification` (AutoModelForSequenceClassification) or `qa`
(AutoModelForQuestionAnswering). Each model must load as it is: no missing, unexpected or
mismatched weights (exit status 3 otherwise, details on stderr)."""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

torch.set_num_threads(2)
inputs = load_file(sys.argv[1])
rest = sys.argv[2:]
for model_dir, kind, out in zip(rest[0::3], rest[1::3], rest[2::3]):
    cls = AutoModelForQuestionAnswering if kind == "qa" else AutoModelForSequenceClassification
    model, info = cls.from_pretrained(model_dir, output_loading_info=True)
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
    if kind == "qa":
        save_file({"start_logits": o.start_logits.contiguous(), "end_logits": o.end_logits.contiguous()}, out)
    else:
        save_file({"logits": o.logits.contiguous()}, out)
