#!/usr/bin/env bash
# Every GPU check, for a machine with one CUDA GPU: the GPU tests (python -m pytest -m gpu), then the step
# benchmark on the four GPU presets. Each part has its own time limit, so the whole fits in 10 minutes on one
# H100/H200; a part that runs out is reported as such (exit 124) and the next one still runs.
#   bash bench/gpu_checks.sh            # results in gpu_checks/ (pytest.log, bench.log, bench.json)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${GPU_CHECKS_OUT:-gpu_checks}
mkdir -p "$out"
python -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(), '| capability',
torch.cuda.get_device_capability())" | tee "$out/device.txt"
status=0
timeout 300 python -m pytest -m gpu -q -rs 2>&1 | tee "$out/pytest.log"
status=$(( status || ${PIPESTATUS[0]} ))
timeout 270 python bench/bench_step.py --steps=10 --out="$out/bench.json" 2>&1 | tee "$out/bench.log"
status=$(( status || ${PIPESTATUS[0]} ))
echo "gpu_checks: exit $status (0 = every check passed)"
exit "$status"
