#!/usr/bin/env bash
# Forward throughput, batch 32 x 128 (real MRPC dev pairs, padded), Secateur vs PyTorch eager
# (2 threads), interleaved: ROUNDS rounds, each running ours then theirs, each reporting its
# median of RUNS forwards per model; the figures are the medians over rounds and their ratios.
# Models: dense MiniLM; MiniLM with 50% of heads and 50% of FFN neurons removed (compact layout,
# Secateur only: transformers cannot load per-layer head counts); MiniLM with a uniform 50% FFN
# cut and 50% of its layers dropped (hf layout: both sides). Secateur also reports
# forward_packed (padding skipped; PyTorch eager has no equivalent, so that ratio is labelled).
set -euo pipefail
source "$(dirname "$0")/env.sh"
ROUNDS="${ROUNDS:-5}"
RUNS="${RUNS:-5}"
cargo bench -q --bench forward --no-run 2>/dev/null
cargo build -q --release 2>/dev/null
CARGO_BIN="$CARGO_TARGET_DIR/release/secateur"
prune() { echo "$2" > "$OUT/spec.json"; "$CARGO_BIN" prune --model "$1" --spec "$OUT/spec.json" --out "$3" >/dev/null; }
prune "$MINILM" '{"pruning": {"method": "magnitude", "granularity": "heads", "scope": "local", "sparsity": 0.5}, "export": {"compact": true}}' "$OUT/h"
prune "$OUT/h/compact" '{"pruning": {"method": "magnitude", "granularity": "neurons", "scope": "local", "sparsity": 0.5}, "export": {"compact": true}}' "$OUT/hn"
prune "$MINILM" '{"pruning": {"method": "magnitude", "granularity": "neurons", "scope": "local", "sparsity": 0.5}}' "$OUT/n"
prune "$OUT/n" '{"pruning": {"method": "magnitude", "granularity": "layers", "sparsity": 0.5}}' "$OUT/nl"
for r in $(seq "$ROUNDS"); do
    SECATEUR_BENCH_INPUT="$OUT/input.json" SECATEUR_BENCH_RUNS="$RUNS" \
        SECATEUR_BENCH_MODELS="$MINILM=dense,$OUT/hn/compact=compact-50h-50n,$OUT/nl=hf-50n-50l" \
        cargo bench -q --bench forward 2>/dev/null | tee -a "$OUT/ours"
    "$PY" bench/torch_forward.py "$OUT/input.json" "$RUNS" "$MINILM=dense" "$OUT/nl=hf-50n-50l" 2>/dev/null | tee -a "$OUT/theirs"
done
python3 - "$OUT/ours" "$OUT/theirs" <<'PY'
import statistics, sys
def med(path, label, key):
    vals = [float(f.split("=")[1]) for line in open(path) if line.startswith(label + "\t") for f in line.split("\t") if f.startswith(key + "=")]
    return statistics.median(vals), len(vals)
ours = {l: med(sys.argv[1], l, "forward_ms") for l in ("dense", "compact-50h-50n", "hf-50n-50l", "dense-packed", "compact-50h-50n-packed")}
theirs = {l: med(sys.argv[2], l, "torch_forward_ms") for l in ("dense", "hf-50n-50l")}
n = ours["dense"][1]
o, t = ours["dense"][0], theirs["dense"][0]
print(f"dense MiniLM 32x128: secateur {o:.1f} ms ({32e3/o:.1f} seq/s), torch {t:.1f} ms ({32e3/t:.1f} seq/s): secateur {t/o:.2f}x torch ({n} rounds)")
c = ours["compact-50h-50n"][0]
print(f"compact 50% heads + 50% FFN: secateur {c:.1f} ms ({32e3/c:.1f} seq/s): {o/c:.2f}x dense")
p, cp = ours["dense-packed"][0], ours["compact-50h-50n-packed"][0]
print(f"padding skipped (forward_packed): dense {p:.1f} ms ({32e3/p:.1f} seq/s, {t/p:.2f}x torch), compact {cp:.1f} ms ({o/cp:.2f}x dense unpacked, {p/cp:.2f}x dense packed)")
h, th = ours["hf-50n-50l"][0], theirs["hf-50n-50l"][0]
print(f"hf 50% FFN + 50% layers: secateur {h:.1f} ms ({o/h:.2f}x dense), torch {th:.1f} ms ({t/th:.2f}x torch dense)")
PY
