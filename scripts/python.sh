#!/usr/bin/env bash
# The Python package (python/: PyO3 + maturin) built into a wheel and tested as a user
# would get it: a virtual environment of its own (created when missing; $TENPAK_PYENV,
# default .venv-py under the checkout), the wheel pip-installed there, then pytest on
# python/tests from outside the source tree, so that `import tenpak` is the installed
# wheel. The tests also drive the CLI (TENPAK_BIN, built by `cargo test`/`cargo build`)
# and check `tenpak export` with its consumers: the compressed-tensors library and
# transformers (compressed-tensors and GGUF loaders). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
venv=${TENPAK_PYENV:-$root/.venv-py}
# Versions the suite was written against (torch from PyPI: its CPU code is what runs).
pkgs=(torch==2.15.0 transformers==5.25.0 compressed-tensors==0.20.1 safetensors==0.8.0
  gguf==0.19.0 accelerate==1.16.0 pytest==9.2.0 maturin==1.16.0)
if [ ! -x "$venv/bin/python" ]; then
  echo "[python] creating $venv and installing ${pkgs[*]}" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pkgs[@]}"
fi
[ -x "$target/debug/tenpak" ] || cargo build --quiet --bin tenpak
rm -f "$target"/wheels/tenpak-*.whl
"$venv/bin/maturin" build --quiet -m python/Cargo.toml -o "$target/wheels" >&2
wheel=$(ls "$target"/wheels/tenpak-*.whl)
echo "[python] installing $(basename "$wheel") into $venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
cd "$(mktemp -d)"
TENPAK_BIN="$target/debug/tenpak" "$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/python/tests" "$@"
