#!/usr/bin/env bash
# Smoke test of the embedded default, the README's way: `make run` (SQLite, filesystem broker,
# artifacts under var/, no PostgreSQL or Redis needed), then the CLI pushes a good model, which must
# reach awaiting_approval, and a broken one, which must be rejected.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=8000
export MODELGATE_VAR_DIR="${MODELGATE_VAR_DIR:-$PWD/var/smoke}"
export MODELGATE_RECONCILE_SECONDS=5
# The embedded default must not need the services: point their usual variables nowhere.
unset DATABASE_URL CELERY_BROKER_URL ARTIFACT_STORE
rm -rf "$MODELGATE_VAR_DIR"; mkdir -p "$MODELGATE_VAR_DIR"
log="$MODELGATE_VAR_DIR/run.log"

if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then
  echo "smoke: port $PORT is already in use" >&2; exit 1
fi
setsid make run >"$log" 2>&1 &
run_pid=$!
cleanup() { kill -TERM -- -"$run_pid" 2>/dev/null || true; wait "$run_pid" 2>/dev/null || true; }
trap cleanup EXIT

for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "$run_pid" 2>/dev/null || { echo "smoke: make run exited"; tail -50 "$log"; exit 1; }
  sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null || { echo "smoke: web never came up"; tail -50 "$log"; exit 1; }

export MODELGATE_URL="http://127.0.0.1:$PORT"
MODELGATE_TOKEN=$(.venv/bin/python manage.py issue_token smoke --create --staff --name smoke | tail -n 1)
export MODELGATE_TOKEN
mg=.venv/bin/modelgate
work=$(mktemp -d)
.venv/bin/python scripts/make_demo_model.py "$work/good.onnx" >/dev/null
.venv/bin/python scripts/make_demo_model.py "$work/broken.onnx" --broken >/dev/null

$mg models create smoke-demo --description "smoke test"
$mg push "$work/good.onnx" --model smoke-demo --wait --until awaiting_approval --timeout 180
set +e
$mg push "$work/broken.onnx" --model smoke-demo --wait --until awaiting_approval --timeout 180
code=$?
set -e
if [ "$code" -ne 1 ]; then
  echo "smoke: the broken model should exit 1 (rejected), got $code"; tail -80 "$log"; exit 1
fi
$mg status smoke-demo
echo "the embedded default works end to end"
echo "smoke: 1 passed, 0 failed"
