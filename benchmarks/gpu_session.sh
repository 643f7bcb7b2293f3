#!/usr/bin/env bash
# One prepared GPU measurement for a lent `device` machine (issue 5 part 2): the GPU recipe (profiles/gpu.yaml)
# plus optional overrides, two seeds trained side by side on the one GPU, then their ensemble. Keras on JAX:
# the lent machines have JAX but no TensorFlow, MLflow or network.
#
# Prepare here (once; both folders are git-ignored through .git/info/exclude, and travel with `carry`):
#   printf '/.gpu/\n/.whl/\n' >> .git/info/exclude
#   .venv/bin/python benchmarks/pack_data.py ../shared/data/fer2013.csv.gz .gpu/fer2013.npz.xz   # 59 MiB, lossless
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl keras==3.15.1 namex optree
# Then, with the device tool: run(command="bash benchmarks/gpu_session.sh", carry=[".gpu", ".whl"], timeout_s=600).
#
# Settings (environment): GPU_OVERRIDES  YAML merged over profiles/gpu.yaml's resnet entry, e.g.
#                                        '{batch_mix: {mode: cutmix, alpha: 1.0, p: 0.5}}' or
#                                        '{swa: {start: 0.75, lr_ratio: 0.05}}' (default: none)
#                         SEEDS          seeds trained side by side (default "42 7"; each takes ~40 % of GPU memory)
#                         EPOCHS         epochs per seed (default 100; the profile's recipe is 120, see below;
#                                        EPOCHS=profile keeps it; EPOCHS=1 with a small pack is a CPU smoke run)
#                         TRAIN_ARGS     more benchmarks/train.py arguments (e.g. "--tta flip" for a quick CPU smoke run)
#                         DATA           packed data (default .gpu/fer2013.npz.xz)
#                         OUT            where results go (the device tool sets it; default benchmarks/out/gpu_session)
# Time: a session now gets 15 minutes of device time in all (the machine's start, ~1-2 min, included) and one command
# at most 10. On one H100 two seeds side by side took 8.0-8.5 min of training each for 120 epochs (RESULTS.md, "GPU
# recipe"), plus ~1 min of install, unpacking, XLA compilation and ten-crop scoring: too close to the 10-minute kill.
# So the default is 100 epochs (~7 min side by side); the one-cycle schedule anneals over whatever EPOCHS is. The time
# budget is switched off here: on JAX every re-plan of it re-compiles the train step (~35 s).
# What comes back ($OUT, at most 8 files): gpu.txt, s<seed>.log and s<seed>.json per seed (written as each run ends, so
# a finished seed comes back even if the command is stopped), ensemble.json, and runs.tgz — every seed's result.json
# and probas.npz (val/test probabilities of every TTA view) with the profile used — of the seeds that finished in this
# call only (earlier calls' seed folders are removed first) — so that runs of several sessions can be ensembled
# here: `tar xzf runs.tgz -C <dir> && python benchmarks/ensemble.py <dir>/s*/resnet <older>/s*/resnet`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out/gpu_session}
DATA=${DATA:-.gpu/fer2013.npz.xz}
SEEDS=${SEEDS:-42 7}
EPOCHS=${EPOCHS:-100}
[ "$EPOCHS" = profile ] && EPOCHS=
WORK=benchmarks/out/gpu_session
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.4}
[ -f "$DATA" ] || { echo "error: $DATA not found — pack it first (see the top of $0)" >&2; exit 2; }
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

# The profile for this session: profiles/gpu.yaml with GPU_OVERRIDES merged into its resnet entry.
profile=$WORK/profile.yaml
"$PY" - "$profile" <<'EOF'
import os, sys, yaml
from ferops.config import deep_merge, load_params
p = load_params("profiles/gpu.yaml")
extra = yaml.safe_load(os.environ.get("GPU_OVERRIDES") or "{}") or {}
# the time budget off unless asked for: on JAX each of its re-plans re-compiles the train step
p["train_deep"]["models"]["resnet"] = deep_merge(p["train_deep"]["models"]["resnet"], {"time_budget_min": None, **extra})
yaml.safe_dump(p, open(sys.argv[1], "w"), sort_keys=False)
print("resnet overrides:", extra or "none")
EOF

for seed in $SEEDS; do  # an earlier call's run of a seed (a warm machine, a local smoke run) must not pass for this one's
    rm -rf "$WORK/s$seed" "$OUT/s$seed.json"
done
rm -f "$OUT/ensemble.json"
for seed in $SEEDS; do
    dir=$WORK/s$seed
    ( "$PY" benchmarks/train.py --model resnet --profile "$profile" --data "$DATA" --no-mlflow --seed "$seed" \
        --out "$dir" ${EPOCHS:+--epochs "$EPOCHS"} ${TRAIN_ARGS:-} > "$OUT/s$seed.log" 2>&1 \
      && cp "$dir/resnet/result.json" "$OUT/s$seed.json" ) &
done
wait
runs=() files=()  # the seeds that finished in this call, and only theirs
for seed in $SEEDS; do
    [ -f "$OUT/s$seed.json" ] && runs+=("$WORK/s$seed/resnet") && files+=("s$seed/resnet/result.json" "s$seed/resnet/probas.npz")
done
: > "$WORK/ensemble.log"
if [ ${#runs[@]} -gt 0 ]; then
    "$PY" benchmarks/ensemble.py "${runs[@]}" > "$OUT/ensemble.json" 2> "$WORK/ensemble.log" || tail -5 "$WORK/ensemble.log"
else
    echo "no seed finished: nothing to ensemble" | tee "$WORK/ensemble.log"
fi
(cd "$WORK" && tar czf - profile.yaml ensemble.log "${files[@]}" 2>/dev/null) > "$OUT/runs.tgz" || true
for seed in $SEEDS; do
    [ -f "$OUT/s$seed.json" ] && "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], \
{k: r.get(k) for k in ('val_accuracy', 'val_accuracy_tta', 'test_accuracy', 'test_accuracy_tta', 'tta', 'epochs_run', \
'best_epoch', 'train_wall_s')})" "$OUT/s$seed.json" "seed $seed" || echo "seed $seed: no result (see $OUT/s$seed.log)"
done
[ ${#runs[@]} -gt 0 ] && cat "$OUT/ensemble.json"
