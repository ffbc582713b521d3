#!/usr/bin/env bash
# GPU smoke test of the CARE paths CPU tests cannot reach: one bf16 SFT step and a few GRPO steps on SmolLM2
# (without and, when vLLM is installed, with vLLM rollouts), one eval batch (hf engine, and vLLM when installed),
# and with two or more GPUs the same SFT step and eval as two processes (torchrun). Prints a table and one
# pass/fail line; exit code 0 = every step passed, 1 = a step failed, 2 = no CUDA device (nothing ran).
#
#   bash benchmarks/gpu_smoke.sh [MODEL] [OUT]     # MODEL default HuggingFaceTB/SmolLM2-135M-Instruct
#
# Each step's full output is kept in OUT/logs/<step>.log (default OUT: runs/gpu-smoke).
set -u
MODEL="${1:-HuggingFaceTB/SmolLM2-135M-Instruct}"
OUT="${2:-runs/gpu-smoke}"
PY="${PYTHON:-python}"
mkdir -p "$OUT/logs"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_smoke: SKIP (no CUDA device visible to $PY)"
  exit 2
fi
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
HAS_VLLM=$("$PY" -c "import importlib.util as u; print(int(u.find_spec('vllm') is not None))")

# tiny data and a bf16 preset (every setting small: this checks the paths, not the quality)
"$PY" -m carelab.cli data synth --kind hotpotqa --n 16 --context-words 60 --out "$OUT/train.json" >/dev/null
"$PY" -m carelab.cli data synth --kind drop --n 16 --context-words 60 --out "$OUT/easy.json" >/dev/null
"$PY" -m carelab.cli data synth --kind msmarco --n 8 --context-words 60 --out "$OUT/hard.jsonl" >/dev/null
"$PY" -m carelab.cli data synth --kind hotpotqa --n 8 --split test --context-words 60 --out "$OUT/test.json" >/dev/null
"$PY" -m carelab.cli care sft-data --input "$OUT/train.json" --out "$OUT/sft.jsonl" >/dev/null
cat > "$OUT/smoke.yaml" <<'YAML'
sft: {dtype: bfloat16, max_length: 2048, logging_steps: 1, report_to: []}
grpo: {dtype: bfloat16, logging_steps: 1, report_to: [], max_completion_tokens: 64, max_prompt_tokens: 1024,
       beta: 0.0}
YAML

ROWS=()
FAILED=0
step() {  # step NAME COMMAND...: run, time, record pass/fail
  local name="$1"; shift
  local t0 t1 status
  t0=$(date +%s%N)
  if "$@" >"$OUT/logs/$name.log" 2>&1; then status=pass; else status=FAIL; FAILED=1; fi
  t1=$(date +%s%N)
  ROWS+=("| $name | $status | $(awk "BEGIN { printf \"%.1f\", ($t1 - $t0) / 1e9 }") |")
}
skip() { ROWS+=("| $1 | skipped ($2) | - |"); }

step sft-bf16-1step "$PY" -m carelab.cli care sft --preset "$OUT/smoke.yaml" --data "$OUT/sft.jsonl" \
  --model "$MODEL" --out "$OUT/sft" --max-steps 1 --batch-size 4
step grpo-3steps "$PY" -m carelab.cli care grpo --preset "$OUT/smoke.yaml" --easy "$OUT/easy.json" \
  --hard "$OUT/hard.jsonl" --model "$MODEL" --init-adapter "$OUT/sft" --out "$OUT/grpo" --max-steps 3 \
  --batch-size 8 --num-generations 4
if [ "$HAS_VLLM" = 1 ]; then
  step grpo-vllm-colocate-3steps "$PY" -m carelab.cli care grpo --preset "$OUT/smoke.yaml" --easy "$OUT/easy.json" \
    --hard "$OUT/hard.jsonl" --model "$MODEL" --out "$OUT/grpo-vllm" --max-steps 3 --batch-size 8 \
    --num-generations 4 --use-vllm --vllm-mode colocate --trl vllm_gpu_memory_utilization=0.3
else
  skip grpo-vllm-colocate-3steps "vLLM not installed"
fi
step eval-hf-1batch "$PY" -m carelab.cli care eval --data "$OUT/test.json" --model "$MODEL" --out "$OUT/eval-hf" \
  --method original --method CARE=care@"$OUT/grpo/final-adapter" --limit 8 --batch-size 8 --max-new-tokens 128 \
  --dtype bfloat16 --no-report
if [ "$HAS_VLLM" = 1 ]; then
  step eval-vllm-1batch "$PY" -m carelab.cli care eval --data "$OUT/test.json" --model "$MODEL" \
    --out "$OUT/eval-vllm" --method original --method CARE=care@"$OUT/grpo/final-adapter" --limit 8 \
    --max-new-tokens 128 --dtype bfloat16 --no-report --engine vllm
else
  skip eval-vllm-1batch "vLLM not installed"
fi
if [ "$NGPU" -ge 2 ]; then
  step sft-bf16-2gpu "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m carelab.cli care sft \
    --preset "$OUT/smoke.yaml" --data "$OUT/sft.jsonl" --model "$MODEL" --out "$OUT/sft-2gpu" --max-steps 1 \
    --batch-size 2
  step eval-hf-2gpu "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m carelab.cli care eval \
    --data "$OUT/test.json" --model "$MODEL" --out "$OUT/eval-2gpu" --limit 8 --batch-size 8 \
    --max-new-tokens 128 --dtype bfloat16 --no-report
else
  skip sft-bf16-2gpu "1 GPU"
  skip eval-hf-2gpu "1 GPU"
fi

echo
echo "GPU smoke test: $MODEL on $NGPU GPU(s), vLLM installed: $HAS_VLLM (logs in $OUT/logs)"
echo
echo "| step | status | seconds |"
echo "|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
if [ "$FAILED" = 0 ]; then echo "gpu_smoke: PASS"; exit 0; else echo "gpu_smoke: FAIL (see $OUT/logs)"; exit 1; fi
