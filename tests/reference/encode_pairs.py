"""Hugging Face's fast tokenizer on sentences and pairs with truncation=True (longest first),
as the GLUE fine-tuning scripts call it. Usage: encode_pairs.py MODEL_DIR IN.json OUT.json"""
import json
import sys

from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained(sys.argv[1])
d = json.load(open(sys.argv[2]))
out = []
for a, b in zip(d["text"], d["text_pair"]):
    e = tok(a, b, truncation=True, max_length=d["max_len"]) if b is not None else tok(a, truncation=True, max_length=d["max_len"])
    out.append({"ids": e["input_ids"], "type_ids": e["token_type_ids"]})
json.dump(out, open(sys.argv[3], "w"))
