#!/usr/bin/env bash
# The whole GPU check in one call on a GPU machine, about 7 minutes (budgeted for an H200), most important first:
#   a. tests/test_gpu.py                                                   -> test_gpu.txt
#   b. python -m benchmarks.gpu_ratio: first-update ratios, SD 1.5 architecture, 512 px, 10 steps -> gpu_ratio.json
#   c. ddpo train on the tiny model, bfloat16, KL penalty and EMA, 2 epochs, then --resume auto to 3 -> train.json
#   d. python -m benchmarks.gpu: one epoch, LoRA and full fine-tune      -> gpu_sd15.json, gpu_sd15.md
# Everything lands in $OUT, 7 files (few, flat and plainly named, to travel back easily): those, smoke.log (all output) and smoke.json
# (each section's exit status and seconds; nvidia-smi, torch and CUDA versions). Each section runs under its own
# timeout (T_TEST, T_RATIO, T_TRAIN, T_BENCH seconds, 400 in all; set them to change it); a failing one is recorded
# and the next one runs; the exit status is 1 when any failed. Train run folders go to a temporary folder.
# DDPO_REV names the revision in smoke.json (no .git travels to the device; make gpu-bundle's command sets it).
# On the GPU machine, install the wheels of `make gpu-bundle` first (it prints the device call).
# --dry-run: the same code paths on the CPU with tiny models and sizes (about a minute; tests/test_gpu_smoke.py),
# OUT defaulting to a new temporary folder. PYTHON: the interpreter (default python3).
set -u
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") DRY=0 ;;
  *) echo "usage: bash benchmarks/gpu_smoke.sh [--dry-run]" >&2; exit 2 ;;
esac
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
echo "gpu_smoke: results in $OUT"
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
LOG=$OUT/smoke.log
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
: "${T_TEST:=60}" "${T_RATIO:=80}" "${T_TRAIN:=90}" "${T_BENCH:=170}"
TRAIN=(--model tiny --dtype bfloat16 --kl-coef 0.1 --ema-decay 0.9 --num-envs 4 --samples-per-epoch 8
       --batch-size 4 --num-steps 4 --image-every 0 --output-dir "$WORK/train")
if (( DRY )); then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  RATIO=(--tiny --device cpu --num-steps 2 --sample-batch 2 --batch-size 2 --compile-options backend=eager)
  TRAIN+=(--device cpu) EPOCHS=1
  BENCH=(--tiny --device cpu --num-steps 2)
else
  RATIO=(--num-steps 10 --sample-batch 4 --batch-size 2 --modes eager --budget-s $((T_RATIO - 25)))  # other shapes
  TRAIN+=(--device cuda) EPOCHS=2
  BENCH=(--device cuda)
fi

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

SECTIONS=()
FAILED=0
section() {  # NAME COMMAND...: output to smoke.log; exit status and seconds to smoke.json
  local name=$1 start rc seconds
  shift
  echo "=== $name: $*" >>"$LOG"
  start=$(now)
  "$@" >>"$LOG" 2>&1
  rc=$?
  seconds=$(since "$start")
  echo "=== $name: exit $rc after $seconds s" | tee -a "$LOG"
  SECTIONS+=("{\"section\": \"$name\", \"status\": $rc, \"seconds\": $seconds}")
  (( rc == 0 )) || FAILED=1
}

test_gpu() {
  timeout -k 5 "$T_TEST" "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py >"$OUT/test_gpu.txt" 2>&1
  local rc=$?
  cat "$OUT/test_gpu.txt"
  return $rc
}

train() {  # a fresh run of EPOCHS epochs, then --resume auto to EPOCHS + 1; train.json from the run folder
  local start rc1 rc2 s1 s2
  start=$(now)
  timeout -k 5 $((T_TRAIN * 3 / 5)) "$PY" -m agents.job.cli train "${TRAIN[@]}" --epochs "$EPOCHS"
  rc1=$?
  s1=$(since "$start") start=$(now)
  timeout -k 5 $((T_TRAIN * 2 / 5)) "$PY" -m agents.job.cli train "${TRAIN[@]}" --epochs $((EPOCHS + 1)) --resume auto
  rc2=$?
  s2=$(since "$start")
  "$PY" - "$WORK/train" "$OUT/train.json" "$EPOCHS" "$rc1" "$s1" "$rc2" "$s2" <<'EOF'
import csv, json, sys
from pathlib import Path

run, out, epochs, rc1, s1, rc2, s2 = sys.argv[1:]
run, epochs = Path(run), int(epochs)
metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else None
progress = run / "logs" / "progress.csv"
rows = list(csv.DictReader(progress.open())) if progress.is_file() else []
report = {"runs": [{"epochs": epochs, "exit": int(rc1), "seconds": float(s1)},
                   {"epochs": epochs + 1, "resume": "auto", "exit": int(rc2), "seconds": float(s2)}],
          "metrics": metrics, "last_progress": rows[-1] if rows else None,
          "checkpoints": sorted(p.name for p in (run / "checkpoints").glob("epoch-*"))}
Path(out).write_text(json.dumps(report, indent=2) + "\n")
trained = len(metrics["epochs"]) if metrics else 0
print(f"train.json: exits {rc1}, {rc2}; {trained} epochs in metrics.json, {len(rows)} progress rows")
sys.exit(0 if (rc1, rc2) == ("0", "0") and trained == epochs + 1 and len(rows) == epochs + 1 else 1)
EOF
}

section test_gpu test_gpu
section gpu_ratio timeout -k 5 "$T_RATIO" "$PY" -m benchmarks.gpu_ratio "${RATIO[@]}" --out "$OUT/gpu_ratio.json"
section train train
section gpu_bench timeout -k 5 "$T_BENCH" "$PY" -m benchmarks.gpu --epochs 1 --batch-size 8 --lora-ranks 4,0 --no-bare \
  --checkpointing off --no-summary --results-dir "$OUT" "${BENCH[@]}"

ENVIRONMENT=$("$PY" - "bash benchmarks/gpu_smoke.sh${1:+ $1}" 2>>"$LOG" <<'EOF'
import json, os, shutil, subprocess, sys

import torch

from benchmarks.record import environment

info = environment(sys.argv[1])
info["git_revision"] = os.environ.get("DDPO_REV") or info["git_revision"]  # no .git travels to the device
info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
smi = shutil.which("nvidia-smi")
info["nvidia_smi"] = subprocess.run(
    [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], capture_output=True, text=True
).stdout.strip() if smi else None
print(json.dumps(info))
EOF
) || ENVIRONMENT=null
JOINED=$(printf '%s,\n    ' "${SECTIONS[@]}")
printf '{\n  "dry_run": %s,\n  "failed": %s,\n  "sections": [\n    %s\n  ],\n  "environment": %s\n}\n' \
  "$( ((DRY)) && echo true || echo false)" "$( ((FAILED)) && echo true || echo false)" "${JOINED%,*}" \
  "$ENVIRONMENT" >"$OUT/smoke.json"
cat "$OUT/smoke.json"
exit $FAILED
