#!/usr/bin/env bash
# Scale-out benchmarks (issue #21), recorded in bench/results/scale.md:
# - jobs per minute with 1, 2 and 4 `tenpak-registry work` processes sharing PostgreSQL
#   and an S3 bucket (moto_server), on I/O-bound jobs (the Hub stand-in holds each weight
#   download to a bandwidth that makes it take ~2 s), with the ratio to 1 worker;
# - claim latency p50/p99 with 1,000 queued jobs and 8 workers on PostgreSQL.
# Needs the machine's PostgreSQL (127.0.0.1:5432) and `pip install 'moto[server]'`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/scale.md
log=$(mktemp)
CI=true cargo test -p tenpak-registry --test scale -- --ignored --test-threads 1 --nocapture bench_ 2>&1 | tee "$log" | grep '^BENCH' || true
{
  echo "# Scale-out: worker processes and claims (issue #21)"
  echo
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores by \`bash bench/scale.sh\` (debug test build;"
  echo "the packing library is built at opt-level 2 there). PostgreSQL $(psql -h 127.0.0.1 -U postgres -tAc 'SHOW server_version' 2>/dev/null || echo '?'),"
  echo "moto_server $(python3 -c 'import moto; print(moto.__version__)') standing for S3."
  echo
  echo "## Jobs per minute by worker processes (I/O-bound jobs)"
  echo
  grep '^BENCH jobs | weights' "$log" | sed 's/^BENCH jobs | //'
  echo
  grep '^BENCH jobs |' "$log" | grep -v 'weights' | sed 's/^BENCH jobs //' | head -1
  echo "|---|---|---|---|---|---|"
  grep '^BENCH jobs |' "$log" | grep -v 'weights' | sed 's/^BENCH jobs //' | tail -n +2
  echo
  echo "## Claim latency, 1,000 queued jobs, 8 workers (PostgreSQL, FOR UPDATE SKIP LOCKED)"
  echo
  grep '^BENCH claims' "$log" | sed 's/^BENCH claims //' | head -1
  echo "|---|---|---|---|---|---|"
  grep '^BENCH claims' "$log" | sed 's/^BENCH claims //' | tail -n +2
} > "$out"
echo "wrote $out"
rm -f "$log"
