#!/usr/bin/env bash
# Training-step throughput and peak memory, MiniLM + classification head, batch 32 x 128 (real
# MRPC dev pairs, padded), dropout on, Secateur vs PyTorch eager (2 threads), interleaved: ROUNDS
# rounds, each running ours (real tokens packed, then every padded position as PyTorch computes
# them) then theirs in fresh processes (so each peak RSS is its own), each
# reporting its median of RUNS steps; the figures are the medians over rounds and their ratio.
set -euo pipefail
source "$(dirname "$0")/env.sh"
ROUNDS="${ROUNDS:-5}"
RUNS="${RUNS:-5}"
cargo bench -q --bench train_step --no-run 2>/dev/null
for r in $(seq "$ROUNDS"); do
    SECATEUR_BENCH_INPUT="$OUT/input.json" SECATEUR_BENCH_RUNS="$RUNS" SECATEUR_MINILM_DIR="$MINILM" \
        cargo bench -q --bench train_step 2>/dev/null | tee -a "$OUT/ours"
    SECATEUR_BENCH_PADDED=1 SECATEUR_BENCH_RUNS="$RUNS" SECATEUR_MINILM_DIR="$MINILM" \
        cargo bench -q --bench train_step 2>/dev/null | tee -a "$OUT/padded"
    "$PY" bench/torch_train.py "$OUT/input.json" "$RUNS" "$MINILM" 2>/dev/null | tee -a "$OUT/theirs"
done
python3 - "$OUT/ours" "$OUT/theirs" "$OUT/padded" <<'PY'
import statistics, sys
def med(path, key):
    return statistics.median(float(f.split("=")[1]) for line in open(path) for f in line.split("\t") if f.startswith(key + "="))
o, t = med(sys.argv[1], "step_ms"), med(sys.argv[2], "step_ms")
print(f"training step MiniLM 32x128: secateur {o:.0f} ms ({32e3/o:.2f} seq/s), torch {t:.0f} ms ({32e3/t:.2f} seq/s): secateur {t/o:.2f}x torch")
p = med(sys.argv[3], "step_ms")
print(f"  secateur computing every padded position as torch does: {p:.0f} ms ({32e3/p:.2f} seq/s): {t/p:.2f}x torch")
for k in ("forward_ms", "backward_ms", "optimizer_ms"):
    print(f"  {k}: secateur {med(sys.argv[1], k):.0f}, torch {med(sys.argv[2], k):.0f}")
po, pt = med(sys.argv[1], "peak_rss_mb"), med(sys.argv[2], "peak_rss_mb")
print(f"peak RSS: secateur {po:.0f} MB, torch {pt:.0f} MB ({po/pt:.2f}x)")
PY
