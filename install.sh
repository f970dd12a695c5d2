#!/usr/bin/env bash
# Install mtft-ray and everything its built-in data needs, on a machine with Python and pip.
#   ./install.sh          the package, its dependencies, the fonts the glyph benchmark renders and
#                         WordNet 3.0 (Debian's wordnet-base), which the built-in text benchmark reads
#   ./install.sh --test   the same plus the test dependencies (pytest, moto's S3 server, ...)
set -euo pipefail
cd "$(dirname "$0")"

# The built-in glyph benchmark renders letters from the fonts installed on the machine; the
# built-in text benchmark reads WordNet's noun database (/usr/share/wordnet/data.noun).
FONTS="fonts-noto-core fonts-freefont-ttf fonts-dejavu-core fonts-liberation wordnet-base"
if command -v dpkg-query >/dev/null && command -v apt-get >/dev/null; then
  missing=""
  for p in $FONTS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "installing Debian packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
  fi
else
  echo "note: no apt-get here; install Noto, FreeFont, DejaVu and Liberation fonts yourself for the glyph benchmark, and WordNet 3.0 for the text benchmark" >&2
fi

extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
python3 -m pip install -q -e ".${extra}"
