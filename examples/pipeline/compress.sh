#!/bin/sh
set -eu
name=$(basename "$INPUT_FILE_PATH")
gzip -9 -n -c "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/$name.gz"
