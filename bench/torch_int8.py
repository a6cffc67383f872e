"""PyTorch (transformers AutoModel, eager, inference_mode, 2 threads) on the batch that
`secateur bench --save-input` wrote: the fp32 model and the same model after
torch.ao.quantization.quantize_dynamic (every nn.Linear to int8, PyTorch's default qconfig:
per-tensor weights, activations quantized per batch at run time); median of RUNS forwards after
a warm-up each (bench/torch_forward.py's loop).
Usage: torch_int8.py INPUT.json RUNS MODEL_DIR"""
import json
import sys

import torch
from torch_forward import load_batch, median_forward_ms
from transformers import AutoModel

torch.set_num_threads(2)
shape, inputs = load_batch(sys.argv[1])
runs = int(sys.argv[2])
fp32 = AutoModel.from_pretrained(sys.argv[3]).eval()
int8 = torch.ao.quantization.quantize_dynamic(fp32, {torch.nn.Linear}, dtype=torch.qint8)
for label, model in (("torch-fp32", fp32), ("torch-int8-dynamic", int8)):
    ms = median_forward_ms(model, inputs, runs)
    print(json.dumps({"label": label, "ms": ms, "seq_per_s": shape[0] * 1e3 / ms, "runs": runs,
                      "threads": torch.get_num_threads(), "engine": torch.backends.quantized.engine}))
