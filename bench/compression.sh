#!/usr/bin/env bash
# Compressed forward on MiniLM, batch 32 x 128 (seeded random ids, no padding), 2 threads:
# Secateur's runtime (`secateur bench`) on the dense model (dense fp32, and int8 dynamic) and on
# the model pruned by global magnitude to 50%, 80% and 90% (runtime `fastest`: each matrix dense
# or sparse as measured), PyTorch eager on the same batch (fp32, and quantize_dynamic int8) and
# ONNX Runtime on the same batch (the torch.onnx export, fp32 and quantize_dynamic int8;
# bench/ort_int8.py, onnxruntime installed into the reference environment on first use).
# Interleaved: ROUNDS rounds, each running every configuration once (each its median of RUNS
# forwards); the figures are the medians over rounds and the ratios of those medians.
set -euo pipefail
source "$(dirname "$0")/env.sh"
ROUNDS="${ROUNDS:-5}"
RUNS="${RUNS:-5}"
cargo build -q --release
BIN="$CARGO_TARGET_DIR/release/secateur"
"$PY" -c "import onnxruntime, onnx" 2>/dev/null || "$PY" -m pip install --quiet onnxruntime==1.32.0 onnx==1.23.2
for s in 0.5 0.8 0.9; do
    echo "{\"pruning\": {\"method\": \"magnitude\", \"scope\": \"global\", \"sparsity\": $s}}" > "$OUT/spec.json"
    "$BIN" prune --model "$MINILM" --spec "$OUT/spec.json" --out "$OUT/m$s" >/dev/null
done
bench() { local label=$1; shift; "$BIN" bench --runs "$RUNS" --threads 2 "$@" | sed "s/^{/{\"label\":\"$label\",/" >> "$OUT/results"; }
"$BIN" bench --model "$MINILM" --runs 1 --save-input "$OUT/input.json" >/dev/null
for r in $(seq "$ROUNDS"); do
    bench dense --model "$MINILM" --runtime dense
    bench int8-dynamic --model "$MINILM" --runtime int8-dynamic
    for s in 0.5 0.8 0.9; do bench "magnitude-$s" --model "$OUT/m$s"; done
    "$PY" bench/torch_int8.py "$OUT/input.json" "$RUNS" "$MINILM" 2>/dev/null >> "$OUT/results"
    "$PY" bench/ort_int8.py "$OUT/input.json" "$RUNS" "$MINILM" "$OUT" 2>/dev/null >> "$OUT/results"
done
python3 - "$OUT/results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
labels = list(dict.fromkeys(r["label"] for r in rows))
med = {l: statistics.median(r["ms"] for r in rows if r["label"] == l) for l in labels}
n = sum(r["label"] == "dense" for r in rows)
reps = {r["label"]: r.get("representations") for r in rows}
print(f"MiniLM 32x128, 2 threads, medians of {n} rounds (each the median of its runs)")
print("| configuration | ms | seq/s | vs Secateur dense fp32 | maps (representations) |")
print("|---|---|---|---|---|")
for l in labels:
    print(f"| {l} | {med[l]:.1f} | {32e3 / med[l]:.1f} | {med['dense'] / med[l]:.2f}x | {reps[l] or ''} |")
print(f"Secateur dense vs torch fp32: {med['torch-fp32'] / med['dense']:.2f}x; "
      f"Secateur int8 dynamic vs torch quantize_dynamic: {med['torch-int8-dynamic'] / med['int8-dynamic']:.2f}x; "
      f"Secateur dense vs ONNX Runtime fp32: {med['ort-fp32'] / med['dense']:.2f}x; "
      f"Secateur int8 dynamic vs ONNX Runtime quantize_dynamic: {med['ort-int8-dynamic'] / med['int8-dynamic']:.2f}x")
PY
