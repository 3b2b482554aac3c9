#!/usr/bin/env bash
# The speech-16k recipe's nine stages by steps (docs/ndvq-that-learns.md), resumable:
#
#   scripts/recipe.sh RUN_ROOT [key=value ...]
#
# Stage A trains the istft preset from scratch at its constant learning rate (20,000 steps); stage B starts from
# A's export at lr 3e-4, commitment 0.1, no waveform loss (17,000 steps, the last 7/17 cooling to zero); stage C
# starts from B's with the STOI loss 0.05 and speed perturbation 0.1 (4,000 steps, the last half cooling); stages
# D (12,000 steps) and E (10,000) each start from the last one's export with C's keys and the PESQ-like loss at
# weight 1, the last half of each cooling; F, G and H (8,000 each) do the same training only the encoder and
# decoder (finetune=[encoder,decoder]: the quantizer stays as E left it); I (6,000 steps) trains as H with each crop
# through a random equaliser (data.equaliser=10: +-10 dB per octave). RECIPE_STEPS="A B C D E F G H I" sets other
# step counts (the cool-downs keep their fractions). The overrides apply to every stage (data.train=..., quantizer=rvq,
# ...), after stage A's keys and before those of the later stages. Run the same command again after a crash or a
# reboot: a stage with an export, or with a later stage's export, is skipped; one with a checkpoint resumes from
# it. An export put there by hand (export-c linked to a trained model) starts the recipe after that stage. Writes
# RUN_ROOT/{a,...,i} (runs, with their logs a.log ... i.log), RUN_ROOT/export-{a,...,i} (models) and
# RUN_ROOT/recipe.log. The command is $NDVQ (default: ndvq).
set -euo pipefail
default_steps="20000 17000 4000 12000 10000 8000 8000 8000 6000"  # stages A to I
read -r steps_a steps_b steps_c steps_d steps_e steps_f steps_g steps_h steps_i extra \
    <<<"${RECIPE_STEPS:-$default_steps}"
count='[1-9][0-9]*'
steps="$steps_a $steps_b $steps_c ${steps_d:-} ${steps_e:-} ${steps_f:-} ${steps_g:-} ${steps_h:-} ${steps_i:-}"
if [ $# -lt 1 ] || [ -n "${extra:-}" ] || ! [[ $steps =~ ^($count\ ){8}$count$ ]]; then
    echo "usage: [RECIPE_STEPS=\"A B C D E F G H I\"] $0 RUN_ROOT [key=value ...]" \
        "(A to I: whole numbers of steps, at least 1)" >&2
    exit 2
fi
root=$1
shift
ndvq=${NDVQ:-ndvq}
config="$(cd "$(dirname "$0")/.." && pwd)/configs/speech-16k-small.yaml"
common=(model=speech-16k-small-istft "$@")
later=(optim.lr=3e-4 loss.quantizer=0.1 loss.waveform=0)
from_c=("${later[@]}" loss.stoi=0.05 data.speed=0.1)  # stage C's keys, which D to I keep
from_d=("${from_c[@]}" loss.pesq=1)                   # stage D's, which E to I keep
from_f=("${from_d[@]}" "finetune=[encoder,decoder]")  # stage F's, which G to I keep
mkdir -p "$root"
say() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$root/recipe.log"; }

# stage NAME STEPS COOLDOWN [key=value ...]: train (or resume) RUN_ROOT/NAME, then export it.
stage() {
    local name=$1 steps=$2 cooldown=$3
    shift 3
    local later_name
    for later_name in a b c d e f g h i; do
        [[ $later_name < $name ]] && continue
        if [ -f "$root/export-$later_name/config.json" ]; then  # written last: a model directory is whole
            say "stage $name: exported already ($root/export-$later_name)"
            return
        fi
    done
    local resume=()
    [ -f "$root/$name/checkpoints/latest" ] && resume=(--resume)
    say "stage $name: $steps steps${resume:+ (resuming)}"
    "$ndvq" train --config "$config" --run-dir "$root/$name" "${common[@]}" "$@" steps="$steps" \
        cooldown_steps="$cooldown" "${resume[@]}" >>"$root/$name.log" 2>&1 ||
        { say "stage $name failed: $(tail -n 1 "$root/$name.log")"; exit 1; }
    "$ndvq" export "$root/$name" "$root/export-$name" >/dev/null
    say "stage $name: done"
}

stage a "$steps_a" 0
stage b "$steps_b" "$((steps_b * 7 / 17))" init_from="$root/export-a" "${later[@]}"
stage c "$steps_c" "$((steps_c / 2))" init_from="$root/export-b" "${from_c[@]}"
stage d "$steps_d" "$((steps_d / 2))" init_from="$root/export-c" "${from_d[@]}"
stage e "$steps_e" "$((steps_e / 2))" init_from="$root/export-d" "${from_d[@]}"
stage f "$steps_f" "$((steps_f / 2))" init_from="$root/export-e" "${from_f[@]}"
stage g "$steps_g" "$((steps_g / 2))" init_from="$root/export-f" "${from_f[@]}"
stage h "$steps_h" "$((steps_h / 2))" init_from="$root/export-g" "${from_f[@]}"
stage i "$steps_i" "$((steps_i / 2))" init_from="$root/export-h" "${from_f[@]}" data.equaliser=10
