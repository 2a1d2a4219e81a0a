#!/bin/sh
# Keeps a running total of lines across jobs in the encrypted volume "state".
set -eu
total_file="$CLOISTER_VOLUME_STATE/total"
jobs_file="$CLOISTER_VOLUME_STATE/jobs"
lines=$(wc -l < "$INPUT_FILE_PATH")
total=$(( $(cat "$total_file" 2>/dev/null || echo 0) + lines ))
jobs=$(( $(cat "$jobs_file" 2>/dev/null || echo 0) + 1 ))
echo "$total" > "$total_file"
echo "$jobs" > "$jobs_file"
echo "jobs=$jobs lines=$total" > "$TMP_OUTPUT_DIR/$(basename "$INPUT_FILE_PATH").tally"
