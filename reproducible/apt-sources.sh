# Sourced by setup.sh and fresh-machine.sh (bash): read apt's source entries in every layout
# Debian 12 uses. Reads $apt_etc (default /etc/apt).
# Every enabled apt entry as one line: `<layout> <file> <type> <uri> <suite> <signed-by|->`,
# layout `list` (one-line) or `sources` (deb822). Comments, disabled stanzas (Enabled: no) and
# files apt ignores (other extensions) are skipped.
apt_entries() {
  local f files=() apt_etc=${apt_etc:-/etc/apt}
  [ -f "$apt_etc/sources.list" ] && files+=("$apt_etc/sources.list")
  if [ -d "$apt_etc/sources.list.d" ]; then
    for f in "$apt_etc"/sources.list.d/*.list "$apt_etc"/sources.list.d/*.sources; do
      [ -f "$f" ] && files+=("$f")
    done
  fi
  [ "${#files[@]}" -gt 0 ] || return 0
  for f in "${files[@]}"; do
    case "$f" in
      *.sources) awk -v file="$f" '
        function flush(   i, j, nu, ns, u, s, t, nt) {
          if (enabled != "no" && types != "" && uris != "") {
            nt = split(types, t, /[ \t]+/); nu = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
            for (k = 1; k <= nt; k++) for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++)
              if (t[k] != "" && u[i] != "" && s[j] != "")
                print "sources", file, t[k], u[i], s[j], (signed ~ /^\// ? signed : "-")
          }
          types = ""; uris = ""; suites = ""; enabled = ""; signed = ""; field = ""
        }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { flush(); next }
        /^[ \t]/ { if (field == "uris") uris = uris " " $0; else if (field == "suites") suites = suites " " $0
                   else if (field == "types") types = types " " $0; next }
        {
          n = index($0, ":"); if (n == 0) next
          key = tolower(substr($0, 1, n - 1)); val = substr($0, n + 1)
          gsub(/^[ \t]+|[ \t]+$/, "", val); field = key
          if (key == "types") types = val; else if (key == "uris") uris = val
          else if (key == "suites") suites = val; else if (key == "enabled") enabled = tolower(val)
          else if (key == "signed-by") signed = val
        }
        END { flush() }' "$f" ;;
      *) awk -v file="$f" '
        { sub(/#.*/, "") }
        NF == 0 { next }
        {
          type = $1; i = 2; signed = "-"
          if ($i ~ /^\[/) {
            opts = ""
            for (; i <= NF; i++) { opts = opts " " $i; if ($i ~ /\]$/) { i++; break } }
            if (match(opts, /signed-by=[^] \t]+/)) signed = substr(opts, RSTART + 10, RLENGTH - 10)
          }
          if (i + 1 <= NF) print "list", file, type, $i, $(i + 1), signed
        }' "$f" ;;
    esac
  done
}

