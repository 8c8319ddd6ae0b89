#!/usr/bin/env bash
# Regenerate the published results from scratch, with the commands each results.md names.
# Run from the repository root on a clean checkout (rows record the git revision; a dirty tree
# shows as "+dirty"), with nothing else running: every cell is a timing. Usage:
#   bash results/regenerate.sh [NAME ...]     # default: all of them
# Each NAME's old folder is moved to NAME.old first: rows are keyed by content, so a store left
# in place would count its old rows as finished and keep them.
set -euo pipefail
PY=${PYTHON:-python}

sweep() { echo "+ python -m harness sweep $*" >&2; "$PY" -m harness sweep "$@"; }

run() {
  local name=$1 out=results/$1
  rm -rf "$out.old"; [ -d "$out" ] && mv "$out" "$out.old"
  # a study's hand-written summary (results.md opens with it) and the outputs of benchmarks run by
  # hand beside it (bench-*.txt, machine-drift.txt: each names its command) survive; re-read the
  # summary against the new rows
  mkdir -p "$out"
  for f in "$out.old"/summary.md "$out.old"/bench-*.txt "$out.old"/machine-drift.txt; do
    if [ -f "$f" ]; then cp "$f" "$out/"; fi
  done
  case $name in
    digits-resnet20)  # the default sweep (quick preset: every method at its quick budgets)
      sweep --preset quick --out "$out" ;;
    digits-resnet20-deepshift)
      sweep --preset quick --methods deepshift --budgets deepshift:mode=q,ps --budgets deepshift:weight_bits=5 --out "$out" ;;
    digits-decompose)
      sweep --preset quick --models resnet56,resnet20 --methods decompose --scenarios SingleStream --out "$out"
      sweep --preset quick --models resnet56,resnet20 --methods decompose --budgets decompose:ratio=0.5 --scenarios SingleStream --out "$out" ;;
    digits-resnet56-layer-vs-filter)
      sweep --preset quick --models resnet56 --methods layer-prune,filter-prune --budgets layer-prune:layers=2,half \
        --budgets layer-prune:pair=filter --budgets filter-prune:macs=0.5 --scenarios SingleStream --out "$out"
      sweep --preset quick --models resnet56 --methods layer-prune --budgets layer-prune:latency=0.6 --scenarios SingleStream --out "$out" ;;
    digits-ftwt)  # standard preset: FTWT needs the longer recipe (see the README)
      sweep --preset standard --models resnet56,vgg16_bn --methods ftwt --budgets ftwt:r=0.75,0.8,0.88 --scenarios SingleStream --out "$out"
      sweep --preset standard --models resnet56,vgg16_bn --methods ftwt --budgets ftwt:r=0.8 --budgets ftwt:calibrate=off --scenarios SingleStream --out "$out" ;;
    # Issue 13's studies on Fashion-MNIST (60,000 training images, the official 10,000 test
    # images), standard preset (baselines 3,000 steps, fine-tunes 2,000 steps at batch 32),
    # timed on ort-cpu at batch 1 only: the question is accuracy at a size/latency.
    fashion-resnet56-layer-vs-filter)
      local common=(--data fashion-mnist --preset standard --models resnet56 --targets ort-cpu --scenarios SingleStream --out "$out")
      sweep "${common[@]}" --methods layer-prune,filter-prune --budgets layer-prune:layers=half \
        --budgets layer-prune:pair=filter --budgets filter-prune:macs=0.35
      sweep "${common[@]}" --methods layer-prune --budgets layer-prune:layers=half --budgets layer-prune:criterion=imprint
      # every criterion one shot (no fine-tune) on the same baseline, reusing the sweep's collection
      "$PY" benchmarks/layer_prune_criteria.py --model resnet56 --data fashion-mnist --preset standard \
        --layers 1,2 --eval-limit 2000 --workdir "$out/artifacts/methods" --out "$out/criteria-one-shot.md" ;;
    fashion-vgg16-layer-vs-filter)  # VGG16-bn one-shot layer removal (shape-keeping conv units)
      local common=(--data fashion-mnist --preset standard --models vgg16_bn --targets ort-cpu --scenarios SingleStream --out "$out")
      # 5 of the 9 removable units at once, and the filter-pruned twin at the same MACs
      sweep "${common[@]}" --methods layer-prune --budgets layer-prune:layers=half --budgets layer-prune:pair=filter
      sweep "${common[@]}" --methods layer-prune --budgets layer-prune:layers=half --budgets layer-prune:criterion=imprint
      # the filter-pruned network at the layer-pruned one's measured latency (about half the
      # dense one's), widths aligned to what ORT runs fast (latency model, issue 15)
      sweep "${common[@]}" --methods filter-prune --budgets filter-prune:latency=0.5 --budgets filter-prune:align=auto
      "$PY" benchmarks/layer_prune_criteria.py --model vgg16_bn --data fashion-mnist --preset standard \
        --layers 1,2,half --eval-limit 2000 --workdir "$out/artifacts/methods" --out "$out/criteria-one-shot.md" ;;
    fashion-resnet20-decompose)
      local common=(--data fashion-mnist --preset standard --models resnet20 --methods decompose --targets ort-cpu --scenarios SingleStream --out "$out")
      sweep "${common[@]}"
      sweep "${common[@]}" --budgets decompose:ratio=0.5
      # the paper-era ResNet path: EVBMF ranks rounded up to multiples of 16, conv2 of each block only
      sweep "${common[@]}" --budgets decompose:multiple=16 --budgets decompose:layers=conv2
      # why EVBMF picks the ranks it picks, on the same schedule (one more dense run, ~10 min)
      for d in fashion-mnist digits; do
        "$PY" -m methods.decompose.diagnose --model resnet20 --data $d --preset standard > "$out/evbmf-diagnosis-$d.txt"
      done ;;
    fashion-resnet20-deepshift)
      local common=(--data fashion-mnist --preset standard --models resnet20 --methods deepshift --budgets deepshift:mode=q,ps
        --targets ort-cpu --scenarios SingleStream --out "$out")
      sweep "${common[@]}" --budgets deepshift:weight_bits=5,4,3
      # the paper trains both: from scratch too (as long as the baseline, 3,000 steps), at 5 bits
      sweep "${common[@]}" --budgets deepshift:weight_bits=5 --budgets deepshift:init=scratch ;;
    fashion-resnet20-ftwt)  # torch-eager: the real-skipping variant; ort-cpu: the masked one
      sweep --data fashion-mnist --preset standard --models resnet20 --methods ftwt --budgets ftwt:r=0.8,0.88,0.97 \
        --targets torch-eager,ort-cpu --scenarios SingleStream --out "$out"
      sweep --data fashion-mnist --preset standard --models resnet20 --methods ftwt --budgets ftwt:r=0.88 \
        --budgets ftwt:mode=joint --targets torch-eager,ort-cpu --scenarios SingleStream --out "$out" ;;
    # Issue 13's studies on digits at the standard preset (the same commands as the Fashion-MNIST
    # ones, on the 1,437 training / 360 test digits): the quick-preset digits folders above are
    # the default sweep's proxies; these give the papers' claims the same fine-tune budgets.
    digits-resnet56-layer-vs-filter-standard)
      local common=(--preset standard --models resnet56 --targets ort-cpu --scenarios SingleStream --out "$out")
      sweep "${common[@]}" --methods layer-prune,filter-prune --budgets layer-prune:layers=half \
        --budgets layer-prune:pair=filter --budgets filter-prune:macs=0.35
      sweep "${common[@]}" --methods layer-prune --budgets layer-prune:layers=half --budgets layer-prune:criterion=imprint
      "$PY" benchmarks/layer_prune_criteria.py --model resnet56 --data digits --preset standard \
        --layers 1,2 --workdir "$out/artifacts/methods" --out "$out/criteria-one-shot.md" ;;
    digits-resnet20-decompose-standard)
      local common=(--preset standard --models resnet20 --methods decompose --targets ort-cpu --scenarios SingleStream --out "$out")
      sweep "${common[@]}"
      sweep "${common[@]}" --budgets decompose:ratio=0.5
      sweep "${common[@]}" --budgets decompose:multiple=16 --budgets decompose:layers=conv2 ;;
    digits-resnet20-ftwt-standard)  # torch-eager: the real-skipping variant; ort-cpu: the masked one
      sweep --preset standard --models resnet20 --methods ftwt --budgets ftwt:r=0.8,0.88,0.97 \
        --targets torch-eager,ort-cpu --scenarios SingleStream --out "$out"
      sweep --preset standard --models resnet20 --methods ftwt --budgets ftwt:r=0.88 \
        --budgets ftwt:mode=joint --targets torch-eager,ort-cpu --scenarios SingleStream --out "$out" ;;
    digits-resnet20-deepshift-standard)
      local common=(--preset standard --models resnet20 --methods deepshift --budgets deepshift:mode=q,ps
        --targets ort-cpu --scenarios SingleStream --out "$out")
      sweep "${common[@]}" --budgets deepshift:weight_bits=5,4,3
      sweep "${common[@]}" --budgets deepshift:weight_bits=5 --budgets deepshift:init=scratch ;;
    # Issue 14 item 3: decomposition-accelerated training where layers are wide (vgg16_bn, batch 128)
    fashion-vgg16-decompose-b128)
      local common=(--data fashion-mnist --train-limit 10000 --preset quick --models vgg16_bn --methods decompose
        --targets ort-cpu --scenarios SingleStream --budgets decompose:batch=128 --budgets decompose:lr=0.02
        --budgets decompose:channels_last=decomposed --out "$out")
      sweep "${common[@]}" --budgets decompose:ratio=0.5 --budgets decompose:decompose_at=0.1
      sweep "${common[@]}" --budgets decompose:ratio=0.25 --budgets decompose:decompose_at=0.1
      sweep "${common[@]}" --budgets decompose:ratio=0.5 --budgets decompose:decompose_at=0.05 ;;
    # Issue 11's done-means: untuned tvm-cpu and tvm-arm on an emulated aarch64 board (qemu-user;
    # its latencies mean nothing), beside ort-cpu. Starts its own tracker and board on loopback.
    digits-resnet20-tvm)
      "$PY" -m harness board tracker --port 9190 > "$out/tracker.log" 2>&1 & local tracker=$!
      "$PY" -m harness board emulate --tracker 127.0.0.1:9190 --key qemu > "$out/board.log" 2>&1 & local board=$!
      local i rc=0; for i in $(seq 600); do  # the board registers in 1-2 minutes (sysroot built once)
        grep -q registered "$out/board.log" && break; sleep 1
      done
      sweep --preset quick --targets ort-cpu,tvm-cpu,tvm-arm --target-option tvm-arm.tracker=127.0.0.1:9190 \
        --target-option tvm-arm.key=qemu --eval-limit 64 --out "$out" || rc=$?
      kill "$board" "$tracker" 2>/dev/null || true; wait "$board" "$tracker" 2>/dev/null || true
      rm -f "$out/tracker.log" "$out/board.log"
      [ "$rc" -eq 0 ] || exit "$rc" ;;
    *) echo "unknown result set: $name" >&2; exit 2 ;;
  esac
  rm -rf "$out/artifacts" "$out/work" "$out.old"
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(digits-resnet20 digits-resnet20-deepshift digits-decompose digits-resnet56-layer-vs-filter digits-ftwt
  fashion-resnet56-layer-vs-filter fashion-resnet20-decompose fashion-resnet20-deepshift
  fashion-resnet20-ftwt fashion-vgg16-decompose-b128)
for n in "${names[@]}"; do run "$n"; done
