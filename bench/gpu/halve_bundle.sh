#!/usr/bin/env bash
# Run here, before a lease, when bench/gpu/tree_size.sh says the tree has outgrown the install:
# a device call carries the tree and its `carry` paths, 64 MiB in all, and the bundle's parts are
# 48 MiB each (../shared/gpu/build-bundle.sh), so the tree must stay under 16 MiB. This cuts every
# part into 24 MiB pieces (.gpu/half/, ignored by git like .gpu/) and prints the install calls:
# one `run` per piece, each writing its piece at its offset of /tmp/gpu/PART there (dd with
# seek and notrunc: a call may be repeated), the last one with .gpu/bin, running install.sh,
# which checks every reassembled part against SHA256SUMS. About 14 calls instead of 7: make them
# back to back (a machine idle for 30 s is given back).
# Usage: bash bench/gpu/halve_bundle.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
piece_mib=24
ls .gpu/part-* .gpu/model-* >/dev/null 2>&1 || { echo "no .gpu/ bundle: bash ../shared/gpu/build-bundle.sh first" >&2; exit 1; }
rm -rf .gpu/half && mkdir -p .gpu/half
for part in .gpu/part-* .gpu/model-*; do
  split -b ${piece_mib}M -d -a 2 "$part" ".gpu/half/$(basename "$part")."
done
pieces=(.gpu/half/*.[0-9][0-9])
echo "${#pieces[@]} pieces of at most $piece_mib MiB; the calls (kind nvidia-h100-x1 on the first):"
last=${pieces[-1]}
for p in "${pieces[@]}"; do
  name=$(basename "$p"); part=${name%.*}; index=$((10#${name##*.}))
  size=$(stat -c %s ".gpu/$part")
  # truncate to at most the part's size: a longer stale file there (an earlier, failed try) would fail the checksum for good
  cmd="mkdir -p /tmp/gpu && dd if=$p of=/tmp/gpu/$part bs=1M seek=$((index * piece_mib)) conv=notrunc status=none"
  cmd="$cmd && truncate -s '<$size' /tmp/gpu/$part"
  if [ "$p" = "$last" ]; then
    echo "  carry [\"$p\", \".gpu/bin\"]: $cmd && (bash .gpu/bin/install.sh; echo \"install rc=\$?\") 2>&1 | tail -4"
  else
    echo "  carry [\"$p\"]: $cmd"
  fi
done
