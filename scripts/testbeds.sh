#!/usr/bin/env bash
# Bring up the real Slurm and OpenStack servers the site-agent tests talk to (see testbeds/).
# Idempotent and quick when they already run; state and caches under
# ${FLOTILLA_TESTBEDS:-/var/tmp/flotilla-testbeds}, so a second run skips the builds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
for testbed in slurm openstack; do
  printf '[testbeds] %s up\n' "$testbed" >&2
  "$root/testbeds/$testbed.sh" up >/dev/null
done
