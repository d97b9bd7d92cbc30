#!/usr/bin/env bash
# The SQL engine at scale (issue J): ROWS rows per party (default 10 M), the reference room's
# query (join + group by + distinct-unit threshold), each engine in its own process, same
# machine, same run, tables in memory (load time excluded), median of 3:
#   dcr           rules checked, threshold written into the plan (dcr-sql)
#   plain         DataFusion's default session, the same SQL, no threshold
#   plain-having  the same with the threshold written by hand as HAVING
#   duckdb        DuckDB (PyPI, pinned) on the same Parquet files, the HAVING query
# Prints seconds, peak RSS and the ratios; checks that dcr and DuckDB return the same rows.
#
# usage: reproducible/bench-sql.sh [ROWS]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
DCR_TOP=$top
DCR_HINT="the SQL benchmark stopped; fix the cause above and run it again"
. "$top/reproducible/lib.sh"
cd "$top"
rows=${1:-10000000}
duckdb_version=2.0.1
venv="${XDG_CACHE_HOME:-$HOME/.cache}/dcr/duckdb-$duckdb_version"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import duckdb' 2>/dev/null; then
  python3 -m venv "$venv" || die "python3 -m venv $venv failed (apt-get install python3-venv)"
  "$venv/bin/pip" install -q "duckdb==$duckdb_version" || die "pip install duckdb==$duckdb_version failed"
fi
cargo build --locked --release -p dcr-tests --bin sql-bench --quiet
work=$(mktemp -d "${TMPDIR:-/tmp}/dcr-bench-sql.XXXXXX")
trap 'rm -rf "$work"' EXIT
t0=$(date +%s)
target/release/sql-bench gen "$work" "$rows"
echo "generated $rows rows per party as Parquet in $(( $(date +%s) - t0 )) s ($(du -sh "$work" | cut -f1))"
declare -A secs
for mode in dcr plain plain-having; do
  line=$(target/release/sql-bench run "$work" "$mode")
  echo "$line"
  secs[$mode]=$(echo "$line" | sed -n 's/.*seconds=\([0-9.]*\).*/\1/p')
done
line=$("$venv/bin/python" - "$work" <<'PY'
import os, resource, statistics, sys, time
import duckdb
d = sys.argv[1]
con = duckdb.connect()
con.execute(f"SET threads TO {os.cpu_count()}")
con.execute(f"CREATE TABLE segments AS SELECT * FROM read_parquet('{d}/segments.parquet')")
con.execute(f"CREATE TABLE conversions AS SELECT * FROM read_parquet('{d}/conversions.parquet')")
q = ("SELECT s.segment, COUNT(DISTINCT s.user) AS overlap, SUM(c.converted) AS conversions "
     "FROM segments s JOIN conversions c ON s.user = c.user GROUP BY s.segment "
     "HAVING COUNT(DISTINCT s.user) >= 50 AND COUNT(DISTINCT c.user) >= 50 ORDER BY s.segment")
times = []
for _ in range(3):
    t = time.perf_counter()
    rows = con.execute(q).fetchall()
    times.append(time.perf_counter() - t)
with open(f"{d}/duckdb.csv", "w") as f:
    f.write("segment,overlap,conversions\n")
    for r in rows:
        f.write(",".join(str(x) for x in r) + "\n")
print(f"duckdb seconds={statistics.median(times):.3f} rows={len(rows)} "
      f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}")
PY
)
echo "$line"
secs[duckdb]=$(echo "$line" | sed -n 's/.*seconds=\([0-9.]*\).*/\1/p')
if cmp -s "$work/dcr.csv" "$work/duckdb.csv"; then
  echo "dcr and DuckDB return the same $(( $(wc -l <"$work/dcr.csv") - 1 )) rows"
else
  diff "$work/dcr.csv" "$work/duckdb.csv" | head -20 >&2
  die "dcr and DuckDB disagree (above)"
fi
awk -v d="${secs[dcr]}" -v p="${secs[plain]}" -v h="${secs[plain-having]}" -v k="${secs[duckdb]}" 'BEGIN{
  printf "dcr / plain DataFusion time: %.2fx (target <= 1.25)\n", d/p
  printf "dcr / plain DataFusion with the HAVING written by hand: %.2fx\n", d/h
  printf "dcr throughput / DuckDB throughput: %.2f (target >= 0.5)\n", k/d }'
