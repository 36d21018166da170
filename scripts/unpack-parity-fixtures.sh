#!/usr/bin/env bash
# Unpacks fixtures.tar, written by scripts/make-parity-fixtures.py on a machine with
# transformers and peft, into the repository. Usage: scripts/unpack-parity-fixtures.sh fixtures.tar
set -euo pipefail
tar="${1:?usage: $0 fixtures.tar}"
cd "$(dirname "$0")/.."
rm -rf model/testdata/parity data/testdata/tokenizer
tar -xf "$tar" model data
echo "unpacked $(tar -tf "$tar" | grep -vc '/$') files"
