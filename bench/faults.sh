#!/usr/bin/env bash
# The fault table (issue #15), recorded in bench/results/faults.md: runs the registry's
# fault tests (registry/tests/hardening.rs, real registry processes against the Hub
# stand-in) and collects the `FAULT | ...` row each prints: the fault injected, the stage it
# hit, the outcome (final state, attempts, commits on the Hub, bytes left in the work
# area) and the time from the fault to that outcome.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/faults.md
log=$(mktemp)
cargo test -q -p tenpak-registry --test hardening -- --nocapture --test-threads=1 2>&1 | tee "$log" | grep -E "^test result|FAULT" || true
grep -q "test result: ok" "$log" || { echo "fault tests failed; see $log" >&2; exit 1; }
{
  echo "# Fault table"
  echo
  echo "\`bash bench/faults.sh\` on $(nproc) cores, $(date -u +%Y-%m-%d); debug build; the tiny Llama fixture served by the"
  echo "Hub stand-in; one registry process at a time on one data dir. SIGKILL rows: the job is held at"
  echo "the stage by \`TENPAK_REGISTRY_PAUSE_AT\` (the registry's fault-injection hook), the process is"
  echo "killed, and a fresh one is started; the time is from the kill to the job's final state"
  echo "(including the restart). Bytes left: the job's work area; chunk-store pieces an interrupted"
  echo "ingest wrote are unreferenced and removed by the next \`gc\` after its grace period."
  echo
  echo "| Fault injected | Stage | Outcome | Time to recover |"
  echo "|---|---|---|---:|"
  grep -h "^FAULT | " "$log" | sed 's/^FAULT //'
} > "$out"
cat "$out"
