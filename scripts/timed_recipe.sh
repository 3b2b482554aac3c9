#!/usr/bin/env bash
# The speech-16k recipe's nine stages (docs/ndvq-that-learns.md) in a wall-clock budget, for a GPU machine:
#
#   scripts/timed_recipe.sh RUN_ROOT SECONDS [key=value ...]
#
# Stage A (20% of the time) trains the istft preset at its constant learning rate until its time is up; its
# speed then sets the step counts of the stages that scripts/recipe.sh runs after it, in the step recipe's
# proportions: B (18%: lr 3e-4, commitment 0.1, no waveform loss, the last 7/17 cooling to zero), C (5%: STOI
# loss 0.05, speed perturbation 0.1, the last half cooling), D (12%) and E (9%: C's keys and the PESQ-like
# loss, the last half of each cooling), F, G and H (7% each: E's keys, encoder and decoder only), I (6%: H's
# keys and the random equaliser); the rest is start-up, exports and the PESQ-like loss's cost. The overrides
# apply to every stage (data.train=..., quantizer=rvq, data.batch_size=32, ...), after stage A's keys and before
# those of the later stages. Writes
# RUN_ROOT/{a,...,i} (runs, with their logs a.log ... i.log), RUN_ROOT/export-{a,...,i} (models) and
# RUN_ROOT/recipe.log. The command is $NDVQ (default: ndvq).
set -euo pipefail
if [ $# -lt 2 ] || ! [[ $2 =~ ^[0-9]+$ ]] || [ "$2" -lt 2 ]; then
    echo "usage: $0 RUN_ROOT SECONDS [key=value ...] (SECONDS: a whole number, at least 2)" >&2
    exit 2
fi
root=$1
seconds=$2
shift 2
ndvq=${NDVQ:-ndvq}
config="$(cd "$(dirname "$0")/.." && pwd)/configs/speech-16k-small.yaml"
common=(model=speech-16k-small-istft "$@")
mkdir -p "$root"
start=$(date +%s)
say() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$root/recipe.log"; }

seconds_a=$((seconds * 20 / 100))
say "stage a: $seconds_a s at the preset's learning rate ($*)"
status=0
timeout "$seconds_a" "$ndvq" train --config "$config" --run-dir "$root/a" steps=100000000 \
    checkpoint_every=250 "${common[@]}" >>"$root/a.log" 2>&1 || status=$?
if [ "$status" -ne 124 ] && [ "$status" -ne 0 ]; then
    say "stage a failed ($status): $(tail -n 1 "$root/a.log")"
    exit 1
fi
if [ ! -f "$root/a/checkpoints/latest" ]; then
    say "stage a: no checkpoint in $seconds_a s (checkpoint_every=250 unless overridden): give it more time"
    exit 1
fi
steps_a=$(sed 's/^step-0*//' "$root/a/checkpoints/latest")
elapsed=$(($(date +%s) - start))
"$ndvq" export "$root/a" "$root/export-a" >/dev/null
# Stage A's steps per second, start-up included, set the later stages' step counts.
# steps SHARE: the steps that SHARE percent of the budget buys at stage A's speed (at least 1).
steps() {
    local n=$((steps_a * seconds * $1 / 100 / elapsed))
    echo $((n > 0 ? n : 1))
}
steps_b=$(steps 18)
steps_c=$(steps 5)
steps_d=$(steps 12)
steps_e=$(steps 9)
steps_f=$(steps 7)
steps_g=$(steps 7)
steps_h=$(steps 7)
steps_i=$(steps 6)
say "stage a: $steps_a steps in $elapsed s; stages b to i: $steps_b, $steps_c, $steps_d, $steps_e, $steps_f," \
    "$steps_g, $steps_h, $steps_i steps"

# Stages B to I as scripts/recipe.sh runs them (stage A is skipped there: its export exists).
RECIPE_STEPS="$steps_a $steps_b $steps_c $steps_d $steps_e $steps_f $steps_g $steps_h $steps_i" NDVQ="$ndvq" \
    bash "$(dirname "$0")/recipe.sh" "$root" "$@"
say "stages b to i: done at $(($(date +%s) - start)) s"
