#!/usr/bin/env bash
# The recipes (images/<name>) whose local inputs are all present, one a line: what the
# reproducibility harnesses build by default. A recipe is left out, with a note on stderr
# naming the command that makes the input, when an OCI image layout it names (`oci = "…"`,
# kind = "oci" workloads) has not been built: images/python-analytics needs
# `bash images/python-analytics/build-oci.sh out/python-analytics/oci` (mmdebstrap, root).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
DCR_TOP=$top
. "$top/reproducible/lib.sh"
cd "$top"
for f in images/*/image.toml; do
  r=${f%/image.toml}
  missing=""
  while IFS= read -r p; do
    [ -e "$r/$p/oci-layout" ] || [ -f "$r/$p" ] || missing=$(realpath -m --relative-to=. "$r/$p")
  done < <(sed -n 's/^oci = "\(.*\)"[[:space:]]*$/\1/p' "$f")
  if [ -n "$missing" ]; then
    echo "note: $r left out: its OCI image $missing is not built (bash $r/build-oci.sh $missing)" >&2
  else
    echo "$r"
  fi
done
