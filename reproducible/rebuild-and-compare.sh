#!/usr/bin/env bash
# Build every recipe twice under different conditions and fail unless every output file is
# byte-identical (dcr-build compare).
#
# Build a: this checkout as it is, in its own target directory (reused when warm: after the
# tests, the guest binaries are not compiled again). Build b: a copy of the working tree at a
# deeper path, compiled from scratch in a fresh target directory. So a warm incremental build
# must equal a cold one. Varied between the two: checkout path (and its depth), source file
# mtimes (2031 in the copy) and wall-clock time (the builds run one after the other), umask,
# TZ, locale, CARGO_BUILD_JOBS (b: 3 on any machine; a: cargo's default, the number of CPUs,
# when it compiled). libfaketime is not used: rustc hangs or panics under it (Timespec::now).
# Nothing in dcr-build reads the clock; tests/tests/image.rs checks the source for it. Shared:
# the pinned toolchain, Cargo.lock and the package cache (inputs pinned by SHA-256).
#
# (Until session 8 both builds were cold, b with one job and its own dcr-build. With the SQL
# engine in the reference image each cold guest build takes ~9 minutes on 2 cores, ~13 with
# one job: a warm a, 3 jobs and one dcr-build for both keep the harness inside CI's time.)
#
# With --against DIR there is no build b here: DIR/<name> holds outputs built elsewhere, and
# build a is compared with them. CI uses this (reproducible/fresh-machine.sh --rebuild): b is
# then the build made on a pristine Debian 12 root, at another path, under another TZ and 3
# jobs, with that root's own compiler and linker packages: a stronger b than a copy on
# this machine, and it saves CI a third cold guest build (~9 minutes on 2 cores).
#
# usage: reproducible/rebuild-and-compare.sh [--against DIR] [images/<name> ...]
#        (default: every recipe reproducible/recipes.sh lists: those whose OCI images are built)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
DCR_TOP=$top
DCR_HINT="the rebuild did not finish; fix the cause above and run bash reproducible/rebuild-and-compare.sh again"
. "$top/reproducible/lib.sh"
cd "$top"
against=""
if [ "${1:-}" = --against ]; then
  [ "$#" -ge 2 ] || die "--against needs a directory (usage: reproducible/rebuild-and-compare.sh [--against DIR] [images/<name> ...])"
  against=$(cd "$2" 2>/dev/null && pwd) || die "--against $2: no such directory"
  shift 2
fi
if [ "$#" -gt 0 ]; then
  recipes=("$@")
else
  # Every recipe whose inputs are present (reproducible/recipes.sh names what is left out).
  mapfile -t recipes < <(bash reproducible/recipes.sh)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/dcr-repro.XXXXXX")
trap 'rm -rf "$work"' EXIT
b="$work/b/a/much/deeper/checkout path"

# Copy the working tree as git sees it (tracked + untracked, not ignored): uncommitted changes
# are part of what is checked.
copy_tree() {
  mkdir -p "$1"
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] || continue
    mkdir -p "$1/$(dirname "$f")"
    cp -p "$f" "$1/$f"
  done
}
a="$top"
if [ -z "$against" ]; then
  copy_tree "$b"
  # Different source mtimes in the second copy.
  find "$b" -exec touch -h -d '2031-05-06 07:08:09' {} +
fi

build() { # dir out umask tz locale jobs
  local dir=$1 out=$2 mask=$3 tz=$4 loc=$5 jobs=$6
  (
    cd "$dir"
    umask "$mask"
    export TZ="$tz" LC_ALL="$loc" LANG="$loc"
    if [ -n "$jobs" ]; then export CARGO_BUILD_JOBS="$jobs"; else unset CARGO_BUILD_JOBS; fi
    unset SOURCE_DATE_EPOCH CARGO_TARGET_DIR RUSTFLAGS
    echo "== build in '$dir' (umask $mask, TZ=$tz, LC_ALL=$loc, jobs=${jobs:-default}, $(date -u +%T))" >&2
    # One dcr-build for both (the guest binaries, kernel, initramfs and UKI are what is
    # compared; each is built from its own tree, in its own target directory): DCR_BUILD_BIN
    # when the caller built it (tests/run.sh, after the workspace build: `-p dcr-build` alone
    # would compile its dependencies again with other features), else this checkout's.
    for r in "${recipes[@]}"; do
      "$builder" image "$r" --out "$out/$(basename "$r")" >/dev/null
    done
  )
}

if [ -n "${DCR_BUILD_BIN:-}" ]; then
  builder=$DCR_BUILD_BIN
  [ -x "$builder" ] || die "DCR_BUILD_BIN=$builder is not an executable"
else
  (cd "$a" && cargo build --locked --release -q -p dcr-build)
  builder="$a/target/release/dcr-build"
fi
if [ -n "$against" ]; then
  for r in "${recipes[@]}"; do
    [ -d "$against/$(basename "$r")" ] || die "--against $against has no $(basename "$r") (built elsewhere for every recipe compared)"
  done
fi
build "$a" "$work/out-a" 022 UTC C.UTF-8 ""
if [ -n "$against" ]; then
  echo "== build b: the outputs in $against (built elsewhere)" >&2
  ln -s "$against" "$work/out-b"
else
  build "$b" "$work/out-b" 077 Pacific/Chatham POSIX 3
fi

status=0
passed=0
failed=0
for r in "${recipes[@]}"; do
  n=$(basename "$r")
  echo "== compare $n"
  if "$builder" compare "$work/out-a/$n" "$work/out-b/$n"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    status=1
  fi
done
echo "reproducible: $passed passed, $failed failed"
if [ "$status" != 0 ]; then
  die "$failed recipe(s) did not rebuild byte for byte (the differences are named above)"
fi
