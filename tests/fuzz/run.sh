#!/bin/sh
# Runs one libFuzzer target for a while over its seed corpus.
#
#   run.sh FUZZER SEEDS SECONDS WORKDIR [fresh]
#
# SEEDS (the corpus in the repository) is only read: inputs the run finds go to
# WORKDIR/corpus, kept between runs unless "fresh" is given (ctest starts
# from the seeds every time, so a run is repeatable). An input that fails is
# saved as WORKDIR/crash-*, leak-* or timeout-* and the script exits non-zero;
# reproduce it with "FUZZER WORKDIR/crash-...".
set -eu
fuzzer=$1 seeds=$2 seconds=$3 work=$4
if [ "${5:-}" = fresh ]; then
    rm -rf "$work/corpus"
fi
mkdir -p "$work/corpus"
# -timeout: one input taking seconds is a bug (a quadratic path, a loop).
# -rss_limit_mb: far above what any one input should need.
exec "$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 -artifact_prefix="$work/" "$work/corpus" "$seeds"
