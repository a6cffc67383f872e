"""Hugging Face's SQuAD windows for tests/squad_windows.rs: the fast tokenizer of a model
directory, as run_qa.py calls it (truncation="only_second", stride, overflowing tokens, offsets).
Usage: qa_windows.py MODEL_DIR IN.json OUT.json"""
import json
import sys

from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained(sys.argv[1])
data = json.load(open(sys.argv[2]))
enc = tok(
    [q.lstrip() for q in data["questions"]],
    data["contexts"],
    truncation="only_second",
    max_length=data["max_len"],
    stride=data["stride"],
    return_overflowing_tokens=True,
    return_offsets_mapping=True,
)
out = [[] for _ in data["questions"]]
for i, sample in enumerate(enc["overflow_to_sample_mapping"]):
    seq = enc.sequence_ids(i)
    spans = [list(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], seq)]
    out[sample].append({"input_ids": enc["input_ids"][i], "context_spans": spans})
json.dump(out, open(sys.argv[3], "w"))
