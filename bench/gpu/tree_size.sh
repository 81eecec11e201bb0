#!/usr/bin/env bash
# Run here, before a lease: will the offline install's largest part still travel with the tree?
# A device call carries the tracked files, the untracked files git does not ignore, and the paths
# in `carry`, 64 MiB in all; the install sends one 48 MiB part per call (../shared/gpu/README.md),
# so the rest of the tree must stay under about 16 MiB. At stop 17 it had grown to 15.3 MB and
# five of the seven install calls were refused mid-lease. Exits 1 when the largest part would not fit.
# Usage: bash bench/gpu/tree_size.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
limit=$((64 * 1024 * 1024))
# (a tracked file deleted in the working tree has no size: stat skips it, and its exit status must
# not end the script under pipefail)
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | { xargs -0 -r stat -c %s -- 2>/dev/null || true; } \
  | awk '{s += $1} END {print s + 0}')
part=$( (stat -c %s .gpu/part-* .gpu/model-* 2>/dev/null || echo 0) | sort -n | tail -1)
left=$((limit - tree - part))
awk -v t="$tree" -v p="$part" -v l="$left" 'BEGIN {m = 1048576
  printf "tree %.1f MiB + largest install part %.1f MiB = %.1f of 64 MiB (%.1f MiB left)\n", t / m, p / m, (t + p) / m, l / m}'
if [ "$left" -lt 0 ]; then
  half=$((limit - tree - 24 * 1048576))
  if [ "$half" -ge 0 ]; then
    echo "too large for the 48 MiB parts: install from 24 MiB pieces (bash bench/gpu/halve_bundle.sh" \
         "prints the calls; $((half / 1048576)) MiB left then), or gzip large untracked results" >&2
  else
    echo "too large even for 24 MiB pieces: gzip or move large untracked results (bench/results/README.md)" >&2
  fi
  exit 1
fi
