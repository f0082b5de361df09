#!/usr/bin/env bash
# `make test-slurm`: train under a real one-node SLURM cluster with DDP over 2 CPU tasks,
# preempt it with SIGUSR1, check the requeued job resumed from its checkpoint and finished
# at max_steps with no step lost or repeated; then stylize as a 2-task job array and check
# every content image was written exactly once. Leaves no process behind.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
work=${ARTBANK_SLURM_DIR:-/tmp/artbank-slurm}
cluster=$work/cluster
run=$work/run
# shellcheck source=tests/slurm/cluster.sh
source "$repo/tests/slurm/cluster.sh"

fail() { echo "test-slurm: FAIL: $*" >&2; tail -n 40 "$run"/*.out >&2 2>/dev/null || true; exit 1; }
trap 'cluster_down "$cluster"' EXIT
start=$(date +%s)

cluster_install
cluster_up "$cluster" 4
echo "test-slurm: cluster up ($(sinfo -h -o '%N %T %c CPUs'))"

rm -rf "$run" && mkdir -p "$run"
cd "$run"
export PYTHONPATH=$repo HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
artbank=("$python" -m artbank_pl)
"${artbank[@]}" world images --output images --per-style 4 --photos 6 >/dev/null
"${artbank[@]}" shards build --input images/collections --output shards --size 48 --maxcount 2 >/dev/null

wait_job() {  # job id, timeout s: wait until it has left the queue
    local id=$1 limit=$2 t=0
    while [ -n "$(squeue -h -j "$id" 2>/dev/null)" ]; do
        sleep 0.5
        t=$((t + 1))
        [ "$t" -lt $((limit * 2)) ] || fail "job $id still queued after $limit s"
    done
}
job_field() { scontrol show job "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }

# --- training, preempted once ----------------------------------------------------------
job=$(ARTBANK_JOB_CONFIG=$repo/tests/conf/slurm-train.yaml \
    ARTBANK_RUN_DIR=$run/train ARTBANK="${artbank[*]}" \
    sbatch --parsable --ntasks-per-node=2 --cpus-per-task=1 --chdir="$run" \
    --output="$run/train-%j.out" "$repo/slurm/train.sbatch")
echo "test-slurm: submitted train job $job (2 tasks, DDP over gloo)"
for _ in $(seq 1 240); do
    [ -f steps/ready ] && break
    [ -n "$(squeue -h -j "$job")" ] || fail "train job ended before it was ready"
    sleep 0.5
done
[ -f steps/ready ] || fail "train job never became ready"
scancel --signal=USR1 "$job"
echo "test-slurm: sent SIGUSR1 at step $(cat steps/ready)"
wait_job "$job" 300
state=$(job_field "$job" JobState)
restarts=$(job_field "$job" Restarts)
[ "$state" = COMPLETED ] || fail "train job state $state"
[ "${restarts:-0}" -ge 1 ] || fail "train job was not requeued (Restarts=$restarts)"
"$python" - "$run" <<'PY' || fail "step check"
import pathlib, sys, torch
run = pathlib.Path(sys.argv[1])
ckpts = sorted((run / "train").glob("hpc_ckpt_*.ckpt"))
assert ckpts, "no hpc checkpoint was written on SIGUSR1"
resumed_at = torch.load(ckpts[0], map_location="cpu", weights_only=True)["global_step"]
final = torch.load(run / "train/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
for rank in (0, 1):
    lines = [l.split() for l in (run / f"steps/steps-rank{rank}.txt").read_text().splitlines()]
    first = [int(s) for r, s in lines if r == "0"]
    second = [int(s) for r, s in lines if r != "0"]
    assert first == list(range(1, len(first) + 1)), f"rank {rank}: first run skipped steps"
    assert len(first) >= resumed_at, f"rank {rank}: checkpoint ahead of training"
    assert second == list(range(resumed_at + 1, 61)), f"rank {rank}: resumed steps {second[:3]}..."
print(f"test-slurm: requeue: resumed from hpc checkpoint at step {resumed_at} on both ranks")
print(f"test-slurm: final global step {final['global_step']}")
assert final["global_step"] == 60
PY
grep -q "Requeued SLURM job\|requeue" "$run"/train-"$job".out || fail "no requeue in the job log"

# --- stylization as a 2-task job array -------------------------------------------------
array=$(ARTBANK_JOB_CONFIG=stylize-quickstart \
    ARTBANK="${artbank[*]}" sbatch --parsable --array=0-1 --ntasks-per-node=1 \
    --chdir="$run" --output="$run/stylize-%A_%a.out" "$repo/slurm/stylize.sbatch" \
    --model.init_args.bank "$run/train/checkpoints/last.ckpt" --model.init_args.steps 4 \
    --data.init_args.content "$run/images/photographs" --data.init_args.resolution 32 \
    --trainer.callbacks.init_args.output_dir "$run/stylized")
echo "test-slurm: submitted stylize array $array (2 tasks)"
wait_job "$array" 300
"$python" - "$run" <<'PY' || fail "stylize check"
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
inputs = sorted(p.stem for p in (run / "images/photographs").glob("*.png"))
manifests = sorted((run / "stylized").glob("manifest-*.jsonl"))
assert len(manifests) == 2, manifests
records = [json.loads(l) for m in manifests for l in m.read_text().splitlines()]
pairs = [(r["key"], r["style"]) for r in records]
styles = {"striped", "dotted", "sketch"}  # artbank world images --styles default
assert sorted(pairs) == sorted((k, s) for k in inputs for s in styles), pairs
files = sorted(p for p in (run / "stylized").rglob("*.png"))
assert len(files) == len(inputs) * len(styles)
print(f"test-slurm: stylize array wrote {len(files)} images, each input once per style")
PY

cluster_down "$cluster"
trap - EXIT
left=$(ps -eo pid,comm | awk '$2 ~ /^(slurmctld|slurmd|slurmstepd|munged)$/' || true)
[ -z "$left" ] || fail "processes left behind: $left"
echo "test-slurm: passed in $(($(date +%s) - start)) s"
