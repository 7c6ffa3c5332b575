#!/usr/bin/env bash
# Every GPU measurement of benchmarks/ in one run of under 8 minutes, on one H100/H200.
#
#   benchmarks/gpu_suite.sh             # on the GPU machine, from anywhere; results in benchmarks/results/
#   benchmarks/gpu_suite.sh --dry-run   # every step at tiny shapes on the CPU; results in a temporary folder
#
# Needs torch, transformers, accelerate and peft installed; the repository runs from src/ (PYTHONPATH),
# nothing is installed or downloaded. Steps, each under its own time cap (and never past the suite's
# budget, SUITE_BUDGET_S, 470 s by default):
#
#   train       benchmarks/train_throughput.py --device cuda   -> results/train_throughput.json
#   eval        benchmarks/gpu_inference.py eval                -> results/gpu_eval_mme.json
#               (2,374 MME-sized yes/no questions, 7B shape in bf16: the engine vs batched HF generate)
#   decode      benchmarks/gpu_inference.py decode              -> results/gpu_decode_bandwidth.json
#               (batch-1 decode tokens/s against weight bytes / measured copy bandwidth)
#   generation  benchmarks/generation_throughput.py --device cuda -> results/generation_throughput_cuda.json
#               (engine vs batch-1 and batched HF generate, OPERA and VCD cost, small model)
#
# Safe to rerun: a rerun overwrites the results; gpu_inference.py, generation_throughput.py and this
# suite write each JSON under a temporary name and rename it into place, so a killed step leaves the
# previous file whole (train_throughput.py writes its own file as it does). A failed or timed-out step is
# recorded and the others still run. The suite's own record (each step's status, seconds and log
# tail) goes to results/gpu_suite.json, and a summary is printed at the end. Exit status: 0 when
# every step succeeded, 1 otherwise.
#
# In --dry-run (or DEVICE=cpu) the measurements run on the CPU at tiny shapes and write to
# OUT_DIR (default: a new temporary folder), never to benchmarks/results/; the train step only checks
# that train_throughput.py starts (--help), since its CPU mode is not part of this suite's contract.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
DEVICE="${DEVICE:-cuda}"
for argument in "$@"; do
  case "$argument" in
    --dry-run) DEVICE=cpu ;;
    -h|--help) sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument $argument (try --help)" >&2; exit 2 ;;
  esac
done

if [[ "$DEVICE" == cpu ]]; then
  OUT_DIR="${OUT_DIR:-$(mktemp -d -t gpu_suite_dry_run.XXXXXX)}"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  TRAIN=("$PYTHON" benchmarks/train_throughput.py --help)
  EVAL=("$PYTHON" benchmarks/gpu_inference.py eval --device cpu --questions 48 --baseline-questions 16 --batch-size 8
        --out-dir "$OUT_DIR")
  DECODE=("$PYTHON" benchmarks/gpu_inference.py decode --device cpu --decode-tokens 16 --repeats 1 --copy-megabytes 64
          --out-dir "$OUT_DIR")
  GENERATION=("$PYTHON" benchmarks/generation_throughput.py --device cpu --prompts 4 --max-new-tokens 4 --batch-size 4
              --opera-prompts 1 --opera-max-new-tokens 2 --num-beams 2 --repeats 1 --out "$OUT_DIR/generation_throughput_cpu.json")
  CAPS=(60 120 90 120)
else
  OUT_DIR="${OUT_DIR:-$REPO/benchmarks/results}"
  TRAIN=("$PYTHON" benchmarks/train_throughput.py --device cuda)
  EVAL=("$PYTHON" benchmarks/gpu_inference.py eval --device cuda --out-dir "$OUT_DIR")
  DECODE=("$PYTHON" benchmarks/gpu_inference.py decode --device cuda --out-dir "$OUT_DIR")
  GENERATION=("$PYTHON" benchmarks/generation_throughput.py --device cuda --out "$OUT_DIR/generation_throughput_cuda.json")
  CAPS=(180 140 90 50)
fi
BUDGET="${SUITE_BUDGET_S:-470}"
mkdir -p "$OUT_DIR"
LOGS="$(mktemp -d -t gpu_suite_logs.XXXXXX)"
STATUS="$LOGS/status.tsv"
: > "$STATUS"
SUITE_START=$SECONDS
echo "gpu_suite: device $DEVICE, results in $OUT_DIR, logs in $LOGS, budget ${BUDGET}s"

# run_step NAME CAP_S COMMAND...: run under min(CAP_S, what is left of the budget); record
# "NAME<TAB>status<TAB>rc<TAB>seconds<TAB>cap" and never stop the suite.
run_step() {
  local name="$1" cap="$2"
  shift 2
  local left=$((BUDGET - (SECONDS - SUITE_START)))
  if ((left < cap)); then cap=$left; fi
  if ((cap < 10)); then
    printf '%s\tskipped\t-\t0\t%s\n' "$name" "$cap" >> "$STATUS"
    echo "gpu_suite: $name skipped (the budget is spent)"
    return 0
  fi
  echo "gpu_suite: $name (cap ${cap}s): $*"
  local start=$SECONDS rc=0
  timeout --kill-after=10 "$cap" "$@" > "$LOGS/$name.log" 2>&1 || rc=$?
  local spent=$((SECONDS - start)) status=ok
  if ((rc == 124 || rc == 137)); then status=timed_out; elif ((rc != 0)); then status=failed; fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$spent" "$cap" >> "$STATUS"
  echo "gpu_suite: $name $status after ${spent}s; last line: $(tail -n 1 "$LOGS/$name.log" | cut -c1-300)"
}

run_step train "${CAPS[0]}" "${TRAIN[@]}"
run_step eval "${CAPS[1]}" "${EVAL[@]}"
run_step decode "${CAPS[2]}" "${DECODE[@]}"
run_step generation "${CAPS[3]}" "${GENERATION[@]}"

# The suite's record and summary (written under a temporary name, then renamed into place).
"$PYTHON" - "$STATUS" "$LOGS" "$OUT_DIR" "$DEVICE" "$((SECONDS - SUITE_START))" <<'PY'
import json, os, sys, time
from pathlib import Path

status_file, logs, out_dir, device, total = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
steps = []
for line in Path(status_file).read_text().splitlines():
    name, status, rc, seconds, cap = line.split("\t")
    log = logs / f"{name}.log"
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
    last_json = None
    for text in reversed(tail):
        try:
            last_json = json.loads(text)
            break
        except ValueError:
            continue
    steps.append({"step": name, "status": status, "exit_code": None if rc == "-" else int(rc), "seconds": int(seconds),
                  "cap_seconds": int(cap), "last_json_line": last_json, "log_tail": tail})
record = {"suite": "benchmarks/gpu_suite.sh", "device": device, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "total_seconds": total, "steps": steps}
out_dir.mkdir(parents=True, exist_ok=True)
partial = out_dir / "gpu_suite.json.partial"
partial.write_text(json.dumps(record, indent=2) + "\n")
os.replace(partial, out_dir / "gpu_suite.json")

def brief(step):
    figures = step["last_json_line"] or {}
    keys = ("ratio", "tokens_per_s", "baseline_tokens_per_s", "mfu", "ratio_over_batched_hf_generate",
            "answers_equal_to_batched_hf_generate", "ours_decode_tokens_per_s", "hf_generate_decode_tokens_per_s",
            "ratio_over_hf_generate", "ratio_over_hf_generate_batched", "identical_to_hf_batched")
    return ", ".join(f"{key} {figures[key]}" for key in keys if key in figures)

print(f"\ngpu_suite summary ({device}, {total} s in all; record: {out_dir / 'gpu_suite.json'})")
for step in steps:
    print(f"  {step['step']:<11} {step['status']:<10} {step['seconds']:>4} s (cap {step['cap_seconds']} s)  {brief(step)}")
for name in ("gpu_decode_bandwidth.json",):
    path = out_dir / name
    if path.exists():
        decode = json.loads(path.read_text())["figures"]
        for label in ("against_measured_copy_bandwidth", "against_nominal_bandwidth"):
            if decode.get(label):
                bound = decode[label]
                print(f"  decode {label}: {bound['bandwidth_gb_per_s']} GB/s -> bound {bound['bound_tokens_per_s']} tokens/s; "
                      f"ours {bound['ours_fraction_of_bound']:.0%}, HF generate {bound['hf_generate_fraction_of_bound']:.0%} of it")
sys.exit(0 if all(step["status"] == "ok" for step in steps) else 1)
PY
