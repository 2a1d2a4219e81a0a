#!/bin/sh
# Upper-cases the input and stamps it with a label, a secret and its arguments, all released
# by the CAS after attestation (the platform never sees the secret or the data).
set -eu
name=$(basename "$INPUT_FILE_PATH")
{
  tr 'a-z' 'A-Z' < "$INPUT_FILE_PATH"
  echo "label=$LABEL stamp=$STAMP"
  echo "args=$*"
} > "$TMP_OUTPUT_DIR/$name"
# The script's own output reaches only the data owner (`cloister job logs … --decrypt`).
echo "upper-cased $name, first line: $(head -n 1 "$INPUT_FILE_PATH")"
