#!/usr/bin/env bash
# The one script a GPU machine runs before anything else: the doctor's table and
# JSON, then the training-step benchmark in every compile mode and in fp32 and bf16. Outputs go
# to benchmarks/results/<gpu>/ (commit them and add their numbers to benchmarks/results/README.md).
#
#   bash benchmarks/gpu_preflight.sh            # both stages (about 10 minutes)
#   bash benchmarks/gpu_preflight.sh doctor     # stage 1 only (at most ~5 minutes)
#   bash benchmarks/gpu_preflight.sh bench      # stage 2 only (~5 minutes: 8 compilations)
#
# RESULTS=/some/dir overrides the results folder (e.g. RESULTS=$OUT on a lent machine whose
# outputs come back from $OUT); PYTHON overrides the interpreter (default: .venv/bin/python if
# present, else python3). Each stage has its own time limit so that a hang cannot take the
# other's time.
set -uo pipefail
cd "$(dirname "$0")/.."
stage="${1:-all}"
case "$stage" in all|doctor|bench) ;; *) echo "error: stage must be all, doctor or bench, got '$stage'" >&2; exit 2;; esac
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" UNIQ_PROGRESS=lines
gpu="$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "")')"
if [ -z "$gpu" ]; then
  echo "error: no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is False); run this on the GPU machine with the CUDA build of torch" >&2
  exit 2
fi
slug="$(echo "$gpu" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')"
out="${RESULTS:-benchmarks/results}/$slug"
mkdir -p "$out"
echo "GPU: $gpu -> $out"
{ date -u; echo "gpu: $gpu"; "$PYTHON" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'; nvidia-smi 2>/dev/null || true; } > "$out/machine.txt"
status=0
if [ "$stage" != bench ]; then
  timeout 330 "$PYTHON" -m uniq doctor --budget 280 -o "$out/doctor.json" 2> "$out/doctor.log" | tee "$out/doctor.txt"
  rc=${PIPESTATUS[0]}; echo "doctor exit code $rc" | tee -a "$out/doctor.txt"; [ "$rc" = 0 ] || status=1
fi
if [ "$stage" != doctor ]; then
  timeout 540 "$PYTHON" benchmarks/train_step.py --device cuda --modes eager,default,reduce-overhead \
    --precisions fp32,bf16 --steps 100 --profile --out "$out/train_step.json" 2> "$out/train_step.log" | tee "$out/train_step.txt"
  rc=${PIPESTATUS[0]}; echo "benchmark exit code $rc" | tee -a "$out/train_step.txt"; [ "$rc" = 0 ] || status=1
fi
exit $status
