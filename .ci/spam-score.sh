#!/usr/bin/env bash
# Deliverability check (issue 15): scores a sample of an outbox with SpamAssassin's local
# rules (`spamassassin -L -t`) and fails when any email scores above the limit.
# Usage: .ci/spam-score.sh OUTBOX_DIR [SAMPLE=30] [LIMIT=1.0]
set -euo pipefail
dir=$1
sample=${2:-30}
limit=${3:-1.0}
command -v spamassassin >/dev/null || { echo "FATAL: spamassassin is not installed" >&2; exit 1; }
mapfile -t all < <(ls "$dir"/*.eml | sort)
total=${#all[@]}
test "$total" -gt 0 || { echo "FATAL: no .eml in $dir" >&2; exit 1; }
# Every k-th file, so the sample spans the campaigns and the customers of the run.
step=$(( total > sample ? total / sample : 1 ))
picked=()
for ((i = 0; i < total && ${#picked[@]} < sample; i += step)); do picked+=("${all[$i]}"); done
score_one() {
  local f=$1 report score
  report=$(spamassassin -L -t < "$f" 2>/dev/null)
  # "X-Spam-Status: No, score=-0.1 required=5.0 tests=..." (folded over lines).
  score=$(printf '%s\n' "$report" | grep -m1 -o 'score=-\?[0-9.]*' | cut -d= -f2)
  if [ -z "$score" ]; then echo "FAIL $f: no score from spamassassin"; return; fi
  local tests
  tests=$(printf '%s\n' "$report" | sed -n '/^X-Spam-Status:/,/^[^[:space:]]/p' | tr -d '\n\t ' | grep -o 'tests=[^ ]*' | cut -d= -f2 | sed 's/autolearn.*//')
  echo "$score $(basename "$f") $tests"
}
export -f score_one
fail=0
while read -r score name tests; do
  if [ "$score" = "FAIL" ]; then echo "$score $name $tests" >&2; fail=1; continue; fi
  if awk -v s="$score" -v l="$limit" 'BEGIN { exit !(s > l) }'; then
    echo "FAIL: $name scores $score > $limit ($tests)" >&2
    fail=1
  else
    echo "ok $score $name $tests"
  fi
done < <(printf '%s\n' "${picked[@]}" | xargs -P 2 -I{} bash -c 'score_one "$1"' _ {})
echo "scored ${#picked[@]} of $total emails, limit $limit"
exit $fail
