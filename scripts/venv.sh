#!/usr/bin/env bash
# Create (once, cached under /var/tmp keyed by pyproject.toml) the virtualenv Flotilla runs in,
# install this checkout into it, and print its path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
key=$(sha256sum "$root/pyproject.toml" | cut -c1-12)
venv="${FLOTILLA_VENV:-/var/tmp/flotilla-venv-$key}"
if [ ! -x "$venv/bin/python" ]; then
  printf '[venv] creating %s\n' "$venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
fi
# Always re-install the checkout itself: the cached venv may point at another clone.
"$venv/bin/pip" install -q -e "$root[dev]" >&2
echo "$venv"
