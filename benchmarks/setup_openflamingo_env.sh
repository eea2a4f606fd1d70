#!/usr/bin/env bash
# The OpenFlamingo side of benchmarks/bench_vs_openflamingo.py: a venv that shares the system's
# torch, transformers and open_clip (--system-site-packages) and adds OpenFlamingo 2.0.1 on top.
# --no-deps: open-flamingo pins torch 2.0.1 and sentencepiece 0.1.98, which we do not want.
# Idempotent: a second run only checks the install. Usage: setup_openflamingo_env.sh [VENV]
set -euo pipefail
venv="${1:-${VLM_BENCH_OF_ENV:-/opt/vlm-bench-of}}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv --system-site-packages "$venv"
fi
if ! "$venv/bin/python" -c "import open_flamingo, einops_exts" 2>/dev/null; then
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    "$venv/bin/python" -m pip install -q --no-deps open-flamingo==2.0.1 einops-exts==0.0.4
fi
"$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import torch, transformers
print(f"openflamingo env ready: open-flamingo {md.version('open-flamingo')}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
EOF
