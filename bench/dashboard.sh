#!/usr/bin/env bash
# The dashboard's heaviest page: a model page of 3 artifacts x 300 tensors (charts of
# bits per layer and error per tensor included). Records its weight and the server's
# render time (Server-Timing, median and max of 20 requests) in
# bench/results/dashboard.md. Usage: bash bench/dashboard.sh [debug|release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"
flag=""
[ "$profile" = "release" ] && flag="--release"
row=$(cargo test $flag -p tenpak-registry --test dashboard a_model_page_of_300_tensor_artifacts_stays_small -- --nocapture 2>&1 |
  grep '^| model page')
mkdir -p bench/results
{
  echo "# Dashboard: the model page"
  echo
  echo "\`bash bench/dashboard.sh $profile\` ($profile build, $(date -u +%F), $(nproc) cores). Goal: under 200 kB and 100 ms of server time."
  echo
  echo "| page | bytes | server render median, ms | max of 20, ms |"
  echo "|---|---:|---:|---:|"
  echo "$row"
} > bench/results/dashboard.md
cat bench/results/dashboard.md
