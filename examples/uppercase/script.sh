#!/bin/sh
# OSCAR contract: the input is at $INPUT_FILE_PATH; whatever lands in $TMP_OUTPUT_DIR is uploaded.
set -eu
name=$(basename "$INPUT_FILE_PATH")
echo "upper-casing $name"
tr '[:lower:]' '[:upper:]' < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/$name"
