#!/bin/sh
# The benchmark sheet of docs/benchmarks.md in one run: every figure issue #9 asks for, one after the
# other on a quiet machine, each script's Markdown and JSON in var/bench/sheet-<UTC time>/.
#
#   sh bench/sheet.sh            # about 35 minutes; PostgreSQL and Redis as for `make test`
#
# Run nothing else meanwhile: each figure is a throughput or a latency on a 2-core machine.
set -eu
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT="var/bench/sheet-$(date -u +%Y%m%dT%H%MZ)"
mkdir -p "$OUT"

run() {
	name=$1
	shift
	echo "== $(date -u +%H:%M:%S) $name: $*"
	"$@" >"$OUT/$name.md" 2>"$OUT/$name.log" || { echo "!! $name failed; see $OUT/$name.log"; tail -20 "$OUT/$name.log"; }
	cat "$OUT/$name.md"
}

{
	echo "commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ)"
	lscpu | grep -E "^(Model name|CPU\(s\))"
	free -g | head -2
	$PY --version
	psql -h 127.0.0.1 -U postgres -Atc "show server_version"
	redis-server --version
	node --version
	uptime
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

run api_vs_mlflow $PY bench/api_vs_mlflow.py --threads 4 --out "$OUT/api_vs_mlflow.json"
run upload $PY bench/upload_rss.py --path both --out "$OUT/upload_rss.json"
run push_to_approval $PY bench/push_to_approval.py --out "$OUT/push_to_approval.json"
run serving $PY bench/serving_overhead.py
run gates $PY bench/gates_throughput.py --repeat 3
run gates_costly_model $PY bench/gates_throughput.py --repeat 3 --hidden 256
# The load tests record their latencies (test-results/load.json) while they check every count.
run load env DATABASE_URL=postgres://postgres@127.0.0.1:5432/modelgate CELERY_BROKER_URL=redis://127.0.0.1:6379/15 \
	$PY -m pytest tests/load/test_load.py -q -p no:cacheprovider
cp test-results/load.json "$OUT/load.json"
cat "$OUT/load.json"
uptime >>"$OUT/machine.txt"
echo "== done: $OUT"
