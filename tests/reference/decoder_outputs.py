"""Small random decoder checkpoints written by transformers itself, and its outputs on them.

usage: decoder_outputs.py WORK_DIR IN.json OUT.json

IN.json: {"input_ids": [[...], ...], "attention_mask": [[...], ...], "cases": [{"name", "class":
"gpt2" | "llama" | "qwen2", "config": {...}, "dtype": "float32" | "bfloat16", "seed"}]}. A case
{"name", "load": true} instead names a checkpoint already under WORK_DIR/NAME (one Secateur
wrote), which is only loaded and run.

Each case's model is built from its config with the seed, every parameter perturbed (normal noise
of std 0.1 on weights and biases, 1 + 0.1·noise on norm weights: freshly initialised models
have zero biases and unit norms, which would hide a misplaced bias or norm), cast to the dtype
and saved with save_pretrained under WORK_DIR/NAME. It is then loaded back from that directory
in float32 (transformers 5's default dtype is the checkpoint's) and run on the batch. OUT.json
holds per case the LM head's logits and the base model's last hidden state, as nested lists.
"""
import json
import sys

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

CLASSES = {
    "gpt2": (GPT2Config, GPT2LMHeadModel),
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}

torch.set_num_threads(2)
work, inp, out = sys.argv[1:4]
spec = json.load(open(inp))
ids = torch.tensor(spec["input_ids"], dtype=torch.long)
mask = torch.tensor(spec["attention_mask"], dtype=torch.long)
results = {}
for case in spec["cases"]:
    path = f"{work}/{case['name']}"
    if not case.get("load"):
        config_cls, model_cls = CLASSES[case["class"]]
        torch.manual_seed(case["seed"])
        model = model_cls(config_cls(**case["config"]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                noise = torch.randn_like(p) * 0.1
                if "norm" in name or "ln_" in name:
                    p.copy_(p + noise if name.endswith("bias") else 1.0 + noise)
                else:
                    p.add_(noise)
        model = model.to(getattr(torch, case["dtype"]))
        model.save_pretrained(path)
    loaded, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    problems = {k: list(v) for k, v in info.items() if v}
    if problems:
        print(json.dumps({"model": path, "loading": problems}), file=sys.stderr)
        sys.exit(3)
    loaded.eval()
    with torch.no_grad():
        logits = loaded(input_ids=ids, attention_mask=mask).logits
        hidden = loaded.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    results[case["name"]] = {"logits": logits.tolist(), "hidden": hidden.tolist()}
json.dump(results, open(out, "w"))
