#!/usr/bin/env bash
# Global 50% magnitude pruning of all encoder linear weights: Secateur vs
# torch.nn.utils.prune.global_unstructured (2 threads) vs a plain copy of the same bytes, on the
# real MiniLM and on a BERT-base-sized random model, in one run. Medians of 7 runs.
set -euo pipefail
source "$(dirname "$0")/env.sh"
ours=$(SECATEUR_MINILM_DIR="$MINILM" SECATEUR_BENCH_OUT="$OUT" cargo bench -q --bench magnitude 2>/dev/null)
theirs=$("$PY" bench/torch_global_unstructured.py "$MINILM/model.safetensors" minilm "$OUT/bert-base-random.safetensors" bert-base-random)
echo "$ours"
echo "$theirs"
python3 - "$ours" "$theirs" <<'PY'
import sys
def parse(text):
    out = {}
    for line in text.strip().splitlines():
        label, *fields = line.split("\t")
        out[label] = {k: float(v) for k, v in (f.split("=") for f in fields)}
    return out
ours, theirs = parse(sys.argv[1]), parse(sys.argv[2])
for label, o in ours.items():
    t = theirs[label]["torch_global_unstructured_ms"]
    print(f"{label}: secateur {o['global_magnitude_ms']:.1f} ms, torch {t:.1f} ms, copy {o['copy_ms']:.1f} ms "
          f"-> {t / o['global_magnitude_ms']:.1f}x faster than torch, {o['global_magnitude_ms'] / o['copy_ms']:.2f}x the copy")
PY
