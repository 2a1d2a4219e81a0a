#!/bin/sh
set -eu
name=$(basename "$INPUT_FILE_PATH")
sha256sum "$INPUT_FILE_PATH" | cut -d' ' -f1 > "$TMP_OUTPUT_DIR/$name.sha256"
