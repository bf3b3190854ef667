#!/usr/bin/env bash
# The README's mini Table 3 from the committed runs: bash scripts/report_table3.sh [OUT]
# (rows 2 and 6 in results/table3-lambda/, the other rows in results/table3-rows/).
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
row "1: adapter only, no RL" results/table3-rows/row1-s*
row "2: IDM, no RL" results/table3-lambda/none-s*
row "3: IDM + SFT on the prompt-only layouts" results/table3-rows/sft-s*
row "4: IDM + GRPO" results/table3-rows/grpo-s*
row "5: adapter only + RL" results/table3-rows/row5-s*
row "6: IDM + RL (shapes-rl, lambda_rl 10)" results/table3-lambda/lam10-s*
row "6 at lambda_rl 4" results/table3-lambda/lam4-s*
row "6, critic baseline" results/table3-rows/critic-s*
row "6, the paper's literal reading" results/table3-rows/literal-s*
idruid report "${dirs[@]}" "${names[@]}" --spread sem --out "${1:-report-table3}"
