#!/usr/bin/env bash
# Write a virtual environment's packages as CI's lock: freeze.sh VENV LOCKFILE (used by .ci/run and .ci/vllm.sh
# under EDGE_TRL_RELOCK=1). The local build label is dropped from torch (2.13.0+cpu -> 2.13.0): the pin stays
# satisfiable by the same release from any index.
set -euo pipefail
venv=$1 lock=$2
{
  echo "# CI's lock: every package CI installs, at the version that last passed the whole suite (.ci/run)."
  echo "# Regenerate with EDGE_TRL_RELOCK=1 bash .ci/run (see README.md, 'Run the tests')."
  "$venv/bin/python" -m pip freeze --all --exclude-editable | sed -E 's/^(torch==[0-9.]+)\+cpu$/\1/'
} > "$lock.new"
mv "$lock.new" "$lock"
