# Sourced by every project script (bash): no silent exit.
#
# - An ERR trap prints one line naming the file, the line and the command that failed, its exit
#   status and what to do, then exits with that status (set -E carries it into functions).
# - `die MESSAGE` prints `error: <script>: MESSAGE` and exits 2.
# - A script sets DCR_HINT to say what to do when one of its commands fails.
#
# Usage, right after `set -euo pipefail`:
#   . "$(dirname "${BASH_SOURCE[0]}")/../reproducible/lib.sh"   (path relative to the script)
dcr_script=$(basename "$0")
DCR_HINT=${DCR_HINT:-"read the lines above, fix the cause and run it again"}

die() {
  echo "error: $dcr_script: $*" >&2
  exit 2
}

dcr_on_err() {
  local rc=$1 line=$2 cmd=$3 src=$4
  # Commands inside $( … ) and ( … ) fail again in the parent: report once, at the top.
  if [ "${BASH_SUBSHELL:-0}" -gt 0 ]; then exit "$rc"; fi
  if [ -n "${DCR_TOP:-}" ]; then src=${src#"$DCR_TOP/"}; fi
  echo "error: $src:$line: \`$cmd\` failed (exit $rc); $DCR_HINT" >&2
  exit "$rc"
}
set -E
trap 'dcr_on_err $? "$LINENO" "$BASH_COMMAND" "${BASH_SOURCE[0]}"' ERR
