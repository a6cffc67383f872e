"""ONNX Runtime (CPU execution provider, 2 intra-op threads, graph optimizations on) on the batch
that `secateur bench --save-input` wrote: the model exported by torch.onnx (transformers
AutoModel, fp32; input_ids, attention_mask, token_type_ids with dynamic batch and sequence
axes) and the same graph after onnxruntime.quantization.quantize_dynamic (ORT's default: int8
weights, activations quantized at run time); median of RUNS runs after a warm-up each.
The exported files are cached in WORK_DIR (created once per run of bench/compression.sh).
Usage: ort_int8.py INPUT.json RUNS MODEL_DIR WORK_DIR"""
import json
import os
import statistics
import sys
import time

import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch_forward import load_batch
from transformers import AutoModel

shape, inputs = load_batch(sys.argv[1])
runs, model_dir, work = int(sys.argv[2]), sys.argv[3], sys.argv[4]
fp32_path, int8_path = os.path.join(work, "model.onnx"), os.path.join(work, "model-int8.onnx")


class LastHiddenState(torch.nn.Module):
    """The model with positional inputs and one output, as the TorchScript exporter takes it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state


if not os.path.exists(int8_path):
    model = LastHiddenState(AutoModel.from_pretrained(model_dir).eval())
    axes = {0: "batch", 1: "seq"}
    torch.onnx.export(
        model,
        (inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]),
        fp32_path,
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes},
        opset_version=17,
        dynamo=False,
    )
    quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8)
feed = {k: v.numpy().astype("int64") for k, v in inputs.items()}
# The export is checked against PyTorch on this batch before anything is timed.
with torch.inference_mode():
    want = LastHiddenState(AutoModel.from_pretrained(model_dir).eval())(*inputs.values()).numpy()
got = ort.InferenceSession(fp32_path, providers=["CPUExecutionProvider"]).run(None, feed)[0]
assert abs(got - want).max() < 1e-3, f"the ONNX export differs from PyTorch by {abs(got - want).max()}"
for label, path in (("ort-fp32", fp32_path), ("ort-int8-dynamic", int8_path)):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    session.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    ms = statistics.median(times)
    print(json.dumps({"label": label, "ms": ms, "seq_per_s": shape[0] * 1e3 / ms, "runs": runs, "threads": 2,
                      "onnxruntime": ort.__version__}))
