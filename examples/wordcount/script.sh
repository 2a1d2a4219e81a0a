#!/bin/sh
set -eu
name=$(basename "$INPUT_FILE_PATH" .txt)
mkdir -p "$TMP_OUTPUT_DIR/$name"
set -- $(wc -l -w -c < "$INPUT_FILE_PATH")
printf 'lines %s\nwords %s\nbytes %s\n' "$1" "$2" "$3" > "$TMP_OUTPUT_DIR/$name/counts.txt"
tr -cs '[:alnum:]' '\n' < "$INPUT_FILE_PATH" | tr '[:upper:]' '[:lower:]' | grep -v '^$' \
  | sort | uniq -c | sort -k1,1nr -k2 | head -n "${TOP_WORDS:-10}" > "$TMP_OUTPUT_DIR/$name/top-words.txt"
echo "counted $name: $2 words"
