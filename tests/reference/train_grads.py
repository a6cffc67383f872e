"""Loss and gradients of a Hugging Face task model on one batch, for the training tests.

usage: train_grads.py INPUTS.safetensors MODEL_DIR KIND OUT.safetensors

INPUTS holds input_ids, attention_mask, token_type_ids and the targets: `labels` (i64 classes,
or f32 scores for regression) or `start_positions` and `end_positions`. KIND is
`classification` or `qa`. Dropout is off (eval mode) so that the result is deterministic; the
loss is the model's own (labels passed in). OUT gets `loss` and the gradient of every parameter
under its Hugging Face name. The model must load with no missing or unexpected weights.
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

torch.set_num_threads(2)
inputs = load_file(sys.argv[1])
model_dir, kind, out = sys.argv[2:5]
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
if kind == "qa":
    kwargs["start_positions"] = inputs["start_positions"].long()
    kwargs["end_positions"] = inputs["end_positions"].long()
else:
    labels = inputs["labels"]
    kwargs["labels"] = labels if labels.dtype == torch.float32 else labels.long()
o = model(**kwargs)
o.loss.backward()
result = {"loss": o.loss.detach().reshape(1)}
for name, p in model.named_parameters():
    result[name] = (p.grad if p.grad is not None else torch.zeros_like(p)).contiguous()
save_file(result, out)
