#!/usr/bin/env bash
# GPU figures in one device call: bench/gpu.sh PART... (split | attacks | inverse | sweep | paper:NAME).
# Installs carried wheels (.whl/, for packages the GPU image lacks) into /tmp/site, runs the
# parts with a time limit each, and copies results (JSON, figures, a tarball of paper folders)
# to $OUT when it is set, else to bench/results/.
set -u
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
rm -rf /tmp/site
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PYTHONPATH || exit 1
fi
OUT=${OUT:-bench/results}
LIMIT=${LIMIT:-280}
nvidia-smi -L 2>/dev/null
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
for part in "$@"; do
  t0=$(date +%s)
  case $part in
    split) timeout "$LIMIT" python3 bench/split_overhead.py --reps 5 --out "$OUT/split_overhead-gpu.json" ;;
    attacks) timeout "$LIMIT" python3 bench/attacks.py --n 64 && cp bench/results/attacks-gpu.json "$OUT/" ;;
    inverse) timeout "$LIMIT" python3 -m bench.inverse_net_scale --out "$OUT/inverse_net_scale-gpu.json" ;;
    sweep) timeout "$LIMIT" python3 bench/sweep.py --out "$OUT/sweep-gpu.json" ;;
    paper:*) name=${part#paper:}
      timeout "$LIMIT" python3 -m workbench.cli paper "$name" \
        && tar czf "$OUT/paper-$name.tgz" --exclude='*.npz' "papers/$name/results/full" ;;
  esac
  echo "== $part: rc=$? $(( $(date +%s) - t0 )) s"
done
