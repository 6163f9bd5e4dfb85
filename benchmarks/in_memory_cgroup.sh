#!/bin/sh
# Run a command inside a cgroup-v1 memory cgroup limited to LIMIT (page cache included),
# then print the cgroup's peak usage and how often it hit the limit. Needs root and a
# writable /sys/fs/cgroup/memory (this project's VM has both).
# Usage: sh benchmarks/in_memory_cgroup.sh 2G python benchmarks/bench_ondisk.py --phase search ...
set -eu
limit=$1; shift
cg=/sys/fs/cgroup/memory/vlmsearch-bench-$$
mkdir "$cg"
trap 'rmdir "$cg" 2>/dev/null || true' EXIT
echo "$limit" > "$cg/memory.limit_in_bytes"
echo 0 > "$cg/memory.swappiness" 2>/dev/null || true
status=0
sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cg" "$@" || status=$?
echo "cgroup: limit $limit, peak usage $(($(cat "$cg/memory.max_usage_in_bytes") / 1048576)) MB," \
     "limit hit $(cat "$cg/memory.failcnt") times, exit $status" >&2
exit $status
