#!/usr/bin/env bash
# The README's main command on a pristine Debian 12 machine, made here: what a newcomer gets.
#
#  root   mmdebstrap --variant=apt from this machine's Debian mirror, with only apt,
#         ca-certificates, git, python3 and curl; apt sources in Debian's deb822 layout
#         (/etc/apt/sources.list.d/debian.sources, no sources.list: Debian 12's cloud and
#         container images). This machine's registry settings come along: its CA certificates
#         (added to the root's trust store), its apt settings for reaching the mirror (proxy,
#         CA, validity checks: the Acquire:: part of apt-config dump), pip configuration and
#         cargo home.
#         A clean checkout (git ls-files, committed as one git commit) goes to /work/main
#         with ../shared beside it; the
#         machine's Rust toolchain (rustup and cargo homes) is bound in: the fresh machine comes
#         with Rust, and the crate download cache is shared. The target directory never is.
#  setup, build, run
#         `bash images/clean-room/run.sh` in a chroot inside a private mount namespace.
#
# It passes only if the result table is printed and equals an independent recomputation
# (Python's sqlite3 on the parties' plaintext: join on user, group by segment, groups under
# k = 50 removed). Prints the wall time of each phase.
#
# usage: reproducible/fresh-machine.sh [--keep] [--tests | --rebuild | --rebuild-to DIR]
#   --keep     leave the root (default: removed at the end, pass or fail)
#   --tests    run the README's other command, `bash tests/run.sh`, instead of the main job
#              (proves the test command installs what it needs; no table check)
#   --rebuild  also the reproducibility check (CI): the main job runs under
#              TZ=<+1245>-12:45 and CARGO_BUILD_JOBS=3 (umask stays 022: apt and the
#              packages' scripts run under it too); then the root's dcr-build builds
#              every recipe in images/ (its guest binaries are those the main job compiled,
#              cold, on the pristine root) and reproducible/rebuild-and-compare.sh --against
#              compares them, file by file, with this checkout's build.
#   --rebuild-to DIR
#              as --rebuild, but the root's builds are copied to DIR/<name> instead of being
#              compared here (.ci/run runs this beside the tests and compares once they have
#              built this checkout's guest: rebuild-and-compare.sh --against DIR).
# Environment: FRESH_DIR (parent of the root; default /var/tmp), ROWS, SEED (for run.sh).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
DCR_TOP=$top
DCR_HINT="the fresh-machine check did not finish; fix the cause above and run bash reproducible/fresh-machine.sh again"
. "$top/reproducible/lib.sh"
. "$top/reproducible/apt-sources.sh"

usage="usage: reproducible/fresh-machine.sh [--keep] [--tests | --rebuild | --rebuild-to DIR]"
keep=""
rebuild=""
rebuild_to=""
command_name=main
while [ "$#" -gt 0 ]; do
  case "$1" in
    --keep) keep=1 ;;
    --tests) command_name=tests ;;
    --rebuild) rebuild=1 ;;
    --rebuild-to)
      [ "$#" -ge 2 ] && [ -n "$2" ] || die "--rebuild-to needs a directory ($usage)"
      rebuild=1
      rebuild_to=$2
      shift
      [ ! -e "$rebuild_to" ] || [ -z "$(ls -A "$rebuild_to")" ] ||
        die "--rebuild-to $rebuild_to: exists and is not empty (the root's builds go there)"
      ;;
    *) die "unknown argument '$1' ($usage)" ;;
  esac
  shift
done
if [ "$command_name" = tests ]; then
  readme_command="bash tests/run.sh"
else
  readme_command="bash images/clean-room/run.sh"
fi
[ -z "$rebuild" ] || [ "$command_name" = main ] || die "--rebuild goes with the main job, not --tests"
run_command=$readme_command
if [ -n "$rebuild" ]; then
  # Varied against this checkout's build: TZ (a POSIX rule: the root has no tzdata), jobs;
  # the path (/work/main), mtimes and the whole root differ anyway.
  run_command="export TZ=\"<+1245>-12:45\" CARGO_BUILD_JOBS=3 && $readme_command"
  run_command+=" && for r in \$(bash reproducible/recipes.sh); do"
  run_command+=" echo \"== fresh-machine: rebuilding \$r\";"
  run_command+=" target/release/dcr-build image \"\$r\" --out \"out/rebuild/\${r#images/}\" >/dev/null || exit 1; done"
fi
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap, mounts and chroot)"
for tool in mmdebstrap unshare chroot python3 git findmnt; do
  command -v "$tool" >/dev/null 2>&1 ||
    die "$tool not found (bash reproducible/setup.sh installs mmdebstrap; the rest come with Debian)"
done
shared=$(cd "$top/.." && pwd)/shared
[ -d "$shared" ] || die "../shared not found beside the checkout ($shared)"
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
[ -x "$cargo_home/bin/cargo" ] || die "no Rust toolchain at $cargo_home (set CARGO_HOME/RUSTUP_HOME)"
[ -d "$rustup_home/toolchains" ] || die "no rustup home at $rustup_home (set RUSTUP_HOME)"

# This machine's Debian mirror (and security mirror), from whichever apt layout it has.
entries=$(apt_etc=/etc/apt apt_entries)
mirror=$(awk '$3 == "deb" && $5 == "bookworm" && $4 ~ /^https?:\/\// { print $4; exit }' <<<"$entries")
security=$(awk '$3 == "deb" && $5 == "bookworm-security" && $4 ~ /^https?:\/\// { print $4; exit }' <<<"$entries")
[ -n "$mirror" ] || die "no Debian bookworm mirror in /etc/apt/sources.list or /etc/apt/sources.list.d/ to build the root from"

t0=$(date +%s)
fresh_parent=${FRESH_DIR:-/var/tmp}
mkdir -p "$fresh_parent"
base=$(mktemp -d "$fresh_parent/dcr-fresh.XXXXXX")
root=$base/root
log=$base/main-job.log
cleanup() {
  local rc=$?
  if [ -z "$keep" ] && [ -d "$base" ]; then
    # The mounts live in the namespace the chroot ran in, gone with it; never delete through one.
    if findmnt -rn -o TARGET | grep -qF "$root/"; then
      echo "fresh-machine: mounts still under $root: not removing it" >&2
    else
      rm -rf "$base"
    fi
  elif [ -d "$base" ]; then
    echo "fresh-machine: kept $base" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT

phase_start=$t0
declare -A took
phase() { local now; now=$(date +%s); took[$1]=$((now - phase_start)); phase_start=$now; }

echo "== fresh-machine: pristine Debian 12 root from $mirror in $root"
# The machine's apt settings for reaching its mirror (proxies, CA, validity checks), as one
# apt.conf file: given to mmdebstrap and kept in the root. Not the rest of its apt.conf.d
# (image-specific hooks such as appstream's fail in a bare root).
apt-config dump | grep -E '^Acquire::(http|https|ftp|Check-Valid-Until|Check-Date|Retries|Max-ValidTime|By-Hash|ForceIPv4|ForceIPv6)' \
  >"$base/00machine-registry" || true
aptopts=("--aptopt=$base/00machine-registry")
mmdebstrap --quiet --variant=apt --include=ca-certificates,git,python3,curl "${aptopts[@]}" \
  bookworm "$root" "deb $mirror bookworm main" >"$base/mmdebstrap.log" 2>&1 ||
  { tail -20 "$base/mmdebstrap.log" >&2; die "mmdebstrap failed (its last lines above; full log $base/mmdebstrap.log)"; }

# Debian's own deb822 layout, as on Debian 12 cloud and container images.
rm -f "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/*
{
  printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror"
  if [ -n "$security" ]; then
    printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$security"
  fi
} > "$root/etc/apt/sources.list.d/debian.sources"
# The machine's registry settings: apt (above), pip, CA certificates (those in this machine's
# bundle that Debian's lacks go to the root's local store).
cp "$base/00machine-registry" "$root/etc/apt/apt.conf.d/00machine-registry"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
[ -d /etc/pip ] && cp -r /etc/pip "$root/etc/pip"
mkdir -p "$root/usr/local/share/ca-certificates"
python3 - /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt" \
  "$root/usr/local/share/ca-certificates" <<'PY'
import re, sys
pem = lambda p: re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", open(p).read(), re.S)
ours = set(pem(sys.argv[2]))
extra = [c for c in pem(sys.argv[1]) if c not in ours]
for i, c in enumerate(extra):
    open(f"{sys.argv[3]}/dcr-machine-{i}.crt", "w").write(c + "\n")
print(f"fresh-machine: {len(extra)} CA certificate(s) of this machine added to the root's trust store")
PY
chroot "$root" update-ca-certificates >"$base/update-ca-certificates.log" 2>&1 ||
  { cat "$base/update-ca-certificates.log" >&2; die "update-ca-certificates failed in the root"; }

# A clean checkout (tracked files as they are in the work tree) and ../shared beside it.
mkdir -p "$root/work/main" "$root/root/.rustup" "$root/root/.cargo"
git -C "$top" ls-files -z --cached | while IFS= read -r -d '' f; do
  [ -e "$top/$f" ] || [ -L "$top/$f" ] || continue
  mkdir -p "$root/work/main/$(dirname "$f")"
  cp -P "$top/$f" "$root/work/main/$f"
done
# A checkout is a git work tree (the rebuild harness lists its files with git): one commit of
# exactly these files, as a fresh clone would have.
git -C "$root/work/main" init -q
git -C "$root/work/main" add -A
git -C "$root/work/main" -c user.name=fresh-machine -c user.email=fresh-machine@localhost \
  commit -q -m "fresh-machine snapshot"
cp -r "$shared" "$root/work/shared"
chmod -R a-w "$root/work/shared"
phase root

# The environment a user's login shell has: rustup's PATH, the registries' CA settings.
envs=(HOME=/root "PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  LANG=C.UTF-8 "TERM=${TERM:-dumb}" "ROWS=${ROWS:-10000}" "SEED=${SEED:-1}")
# Under --tests a missing tool must fail a test, never skip it (the tests' CI rule).
if [ "$command_name" = tests ]; then envs+=(CI=true); else envs+=("CI=${CI:-}"); fi
while IFS='=' read -r name _; do
  case "$name" in
    SSL_CERT_FILE|SSL_CERT_DIR|CURL_CA_BUNDLE|REQUESTS_CA_BUNDLE|GIT_SSL_CAINFO|PIP_CERT|PIP_INDEX_URL|\
    PIP_EXTRA_INDEX_URL|PIP_TRUSTED_HOST|PIP_DEFAULT_TIMEOUT|PIP_DISABLE_PIP_VERSION_CHECK|\
    CARGO_HTTP_*|CARGO_NET_*|CARGO_REGISTRIES_*|CARGO_REGISTRY_*|RUSTUP_DIST_SERVER|RUSTUP_UPDATE_ROOT|\
    http_proxy|https_proxy|no_proxy|HTTP_PROXY|HTTPS_PROXY|NO_PROXY)
      envs+=("$name=${!name}") ;;
  esac
done < <(env)

echo "== fresh-machine: $readme_command in the root (chroot, private mount namespace)"
marks=$base/marks
(
rc=0
unshare --mount --propagation private -- bash -euc '
  root=$1 rustup_home=$2 cargo_home=$3 readme_command=$4; shift 4
  mount --rbind /dev "$root/dev"
  mount -t proc proc "$root/proc"
  mount -t sysfs -o ro sysfs "$root/sys"
  mount -t tmpfs tmpfs "$root/tmp"
  mount --bind "$rustup_home" "$root/root/.rustup"
  mount --bind "$cargo_home" "$root/root/.cargo"
  exec chroot "$root" /usr/bin/env -i "$@" bash -c "cd /work/main && $readme_command"
' fresh "$root" "$rustup_home" "$cargo_home" "$run_command" "${envs[@]}" </dev/null 2>&1 || rc=$?
echo "$rc" >"$base/status"
) |
  while IFS= read -r line; do
    printf '%s\n' "$line"
    printf '%s\n' "$line" >>"$log"
    case "$line" in
      "== ["*"] building"*) echo "build-start $(date +%s)" >>"$marks" ;;
      "== ["*"] manufacturing"*) echo "build-end $(date +%s)" >>"$marks" ;;
      "== ["*"] dcr-build image"*) echo "image-start $(date +%s)" >>"$marks" ;;
      "== ["*"] reference values"*) echo "image-end $(date +%s)" >>"$marks" ;;
    esac
  done
status=$(cat "$base/status" 2>/dev/null || echo "unknown")
end=$(date +%s)
mark() { [ -f "$marks" ] || return 0; awk -v k="$1" '$1 == k { print $2 }' "$marks" | tail -1; }
bs=$(mark build-start); be=$(mark build-end); is=$(mark image-start); ie=$(mark image-end)
if [ -n "$bs" ]; then took[setup]=$((bs - phase_start)); else took[setup]=$((end - phase_start)); fi
took[build]=0
if [ -n "$bs" ] && [ -n "$be" ]; then took[build]=$((be - bs)); fi
if [ -n "$is" ] && [ -n "$ie" ]; then took[build]=$((took[build] + ie - is)); fi
took[run]=$((end - phase_start - took[setup] - took[build]))
printf 'fresh-machine: wall time root %ss, setup %ss, build %ss (cargo build + dcr-build image), run %ss; total %ss\n' \
  "${took[root]}" "${took[setup]}" "${took[build]}" "${took[run]}" "$((end - t0))"
[ "$status" = 0 ] || die "$readme_command failed in the fresh root (exit $status): its output above, log $log"
if [ "$command_name" = tests ]; then
  echo "fresh-machine: passed ($readme_command)"
  exit 0
fi

# The table must be printed, and equal what sqlite3 computes from the parties' plaintext.
run_dir=$root/work/main/out/clean-room-run
if python3 - "$run_dir/data/publisher.csv" "$run_dir/data/advertiser.csv" "$run_dir/result.csv" "$log" <<'PY'
import csv, sqlite3, sys
pub, adv, result, log = sys.argv[1:5]
db = sqlite3.connect(":memory:")
db.execute("create table publisher(user text, segment text)")
db.execute("create table advertiser(user text, converted integer)")
for table, path, header in (("publisher", pub, ["user", "segment"]), ("advertiser", adv, ["user", "converted"])):
    rows = list(csv.reader(open(path, newline="")))
    if rows[0] != header:
        sys.exit(f"error: fresh-machine: {path}: header {rows[0]} is not {header}")
    db.executemany(f"insert into {table} values (?, ?)", rows[1:])
expected = [("segment", "overlap", "conversions")] + [
    tuple(map(str, r)) for r in db.execute(
        "select p.segment, count(*), sum(a.converted) from publisher p join advertiser a on p.user = a.user "
        "group by p.segment having count(*) >= 50 order by p.segment")]
got = [tuple(r) for r in csv.reader(open(result, newline=""))]
if got != expected:
    sys.exit(f"error: fresh-machine: {result} differs from sqlite3's recomputation:\n  got      {got}\n  expected {expected}")
lines = open(log).read().splitlines()
try:
    start = next(i for i, l in enumerate(lines) if l.startswith("== result"))
except StopIteration:
    sys.exit("error: fresh-machine: the main job printed no result table")
printed = [tuple(l.split()) for l in lines[start + 1:start + 1 + len(expected)]]
if printed != expected:
    sys.exit(f"error: fresh-machine: the printed table differs from sqlite3's recomputation:\n  printed  {printed}\n  expected {expected}")
print(f"fresh-machine: the printed table ({len(expected) - 1} segments) equals sqlite3's recomputation from the plaintext")
PY
then :; else exit 1; fi
if [ -n "$rebuild_to" ]; then
  mkdir -p "$rebuild_to"
  cp -a "$root/work/main/out/rebuild/." "$rebuild_to/"
  echo "fresh-machine: the root's builds are in $rebuild_to ($(ls "$rebuild_to" | tr '\n' ' '))"
elif [ -n "$rebuild" ]; then
  echo "== fresh-machine: the root's builds against this checkout's (reproducible/rebuild-and-compare.sh --against)"
  bash "$top/reproducible/rebuild-and-compare.sh" --against "$root/work/main/out/rebuild"
fi
echo "fresh-machine: passed"
