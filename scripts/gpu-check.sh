#!/usr/bin/env bash
# The real-GPU check: llmvisor (the `process` unit manager) on one NVIDIA GPU with a
# driver and PyTorch (no vLLM), with scripts/gpu-check/server.py, a small
# OpenAI-compatible server of this project that takes GPU memory with torch, as the
# model. It checks what the simulated GPUs of the test suite stand in for:
#
#   - `llmvisor gpus` reads the real inventory (UUIDs, memory, processes; as nvidia-smi);
#   - `gpus = "any"` placement uses the real free memory;
#   - a model that does not fit evicts an idle one, and NVML shows the memory freed;
#   - a pinned model sees exactly its GPU, by UUID;
#   - a model asking for more memory than the GPU has dies with torch's real CUDA
#     out-of-memory error, and llmvisor steps it down (/health, `llmvisor status`,
#     llmvisor_model_oom_total);
#   - SIGTERM leaves no process on the GPU.
#
# One PASS/FAIL line per check, then a summary; exit 1 if any failed. Under 5 minutes.
#
#   scripts/gpu-check.sh            run it (needs the GPU, its driver, python3 with torch)
#   scripts/gpu-check.sh --dry-run  no GPU: script syntax, Python syntax, and
#                                   `llmvisor check-config` on the configuration it
#                                   would run (tests/engines.rs runs this in CI)
#
# LLMVISOR: the llmvisor binary (default: target/release/llmvisor, then
# target/debug/llmvisor, then llmvisor on PATH). GPU_CHECK_PYTHON: a python with
# torch (default python3).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
here=$repo/scripts/gpu-check
py=${GPU_CHECK_PYTHON:-python3}
if [ -z "${LLMVISOR:-}" ]; then
  for c in "$repo/target/release/llmvisor" "$repo/target/debug/llmvisor" "$(command -v llmvisor || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then LLMVISOR=$c; break; fi
  done
fi
[ -n "${LLMVISOR:-}" ] || { echo "gpu-check: no llmvisor binary (cargo build, or set LLMVISOR)" >&2; exit 1; }

case "${1:-}" in
  --dry-run)
    bash -n "$0"
    echo "PASS dry run: bash -n $0"
    exec python3 "$here/check.py" --dry-run --llmvisor "$LLMVISOR" --python "$py"
    ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

echo "== gpu-check: $(date -u +%FT%TZ), $("$LLMVISOR" --version 2>/dev/null || echo llmvisor), $("$py" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)' 2>&1 | tail -n 1)"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader | sed 's/^/   /'
fi
exec timeout 290 python3 "$here/check.py" --llmvisor "$LLMVISOR" --python "$py"
