#!/usr/bin/env bash
# The README's mini Table 3 from the committed runs: bash scripts/report_table3.sh [OUT] [narrow]
# Without "narrow": today's world (results/table3/: every row from results/stage1/ or
# results/stage1-baseline/, scored on shapes-mig, shapes-sam, shapes-strips and shapes-mig-narrow).
# With it: the narrow world's table of earlier README versions (results/narrow/table3-lambda/ and
# results/narrow/table3-rows/, scored on the -narrow benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
dirs=()
names=()
row() {
    local label=$1
    shift
    for run in "$@"; do
        if [ -d "$run" ]; then
            dirs+=("$run")
            names+=(--name "$label=$run")
        fi
    done
}
if [ "${2:-}" = narrow ]; then
    n=results/narrow
    row "1: adapter only, no RL" $n/table3-rows/row1-s*
    row "2: IDM, no RL" $n/table3-lambda/none-s*
    row "3: IDM + SFT on the prompt-only layouts" $n/table3-rows/sft-s*
    row "4: IDM + GRPO" $n/table3-rows/grpo-s*
    row "5: adapter only + RL" $n/table3-rows/row5-s*
    row "6: IDM + RL (shapes-rl, lambda_rl 10)" $n/table3-lambda/lam10-s*
    row "6 at lambda_rl 4" $n/table3-lambda/lam4-s*
    row "6, critic baseline" $n/table3-rows/critic-s*
    row "6, the paper's literal reading" $n/table3-rows/literal-s*
else
    t=results/table3
    row "1: adapter only, no RL" $t/row1-s*
    row "2: IDM, no RL" $t/none-s*
    row "3: IDM + SFT on the prompt-only layouts" $t/sft-s*
    row "4: IDM + GRPO" $t/grpo-s*
    row "5: adapter only + RL" $t/row5-s*
    row "6: IDM + RL (shapes-rl: prompts of the narrow geometry)" $t/rl-s*
    row "6, prompts of COCO-MIG's geometry" $t/coco-prompts-s*
    row "6, coco prompts, the paper's reward (Eq. 6, no threshold)" $t/paper-reward-s*
    row "6, coco prompts, credit to the front box only" results/rl-cause/visible-credit-s*
fi
idruid report "${dirs[@]}" "${names[@]}" --spread sem --out "${1:-report-table3}"
