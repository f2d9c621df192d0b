"""The batch upsert alone (``postgres.upsert_rows``, behind every change, spool entry and re-loaded page): rows/s
and client CPU, inserting then updating the same rows, in batches as the spool's apply writes them.

    .venv/bin/python bench/bench_upsert.py [--rows 30000] [--batch 2000] [--rounds 3] [--tree /another/checkout]

Starts its own PostgreSQL; the rows are bench_spool's items of about 300 bytes (8 attributes: text, numbers, a
boolean, a string set, a map) converted by podyn's RowConverter. ``--tree`` measures the podyn of another checkout
(its ``podyn_py`` is imported instead of this one's). After each round the table's contents are summed and hashed,
so that two trees can be seen to store the same rows. Never run as a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=ROOT)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree))
    import podyn_py  # noqa: PLC0415 - from --tree, before bench_spool puts this checkout on the path

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_spool import item  # noqa: PLC0415

    from podyn_py.conversion import RowConverter  # noqa: PLC0415
    from podyn_py.core.schema import KeyAttribute, TableSpec  # noqa: PLC0415
    from podyn_py.demo_services import LocalPostgres  # noqa: PLC0415
    from podyn_py.target.postgres import PostgresTarget, upsert_rows  # noqa: PLC0415

    print(f"# podyn_py from {Path(podyn_py.__file__).parent}", flush=True)
    spec = TableSpec("upserts", "public", "upserts", KeyAttribute("pk", "S"))
    with LocalPostgres() as pg:
        target = PostgresTarget(pg.url, retry_seconds=5)
        target.ensure_metadata()
        schema = target.prepare_table(spec, create=True, citus=False)
        schema, rows, rejected = RowConverter(schema, target).convert([item(i) for i in range(args.rows)])
        assert not rejected
        for round_ in range(args.rounds):
            with target.connect() as conn:
                conn.execute("TRUNCATE upserts")
                conn.commit()
                for what in ("insert", "update"):
                    wall, cpu = time.perf_counter(), time.thread_time()
                    for start in range(0, len(rows), args.batch):
                        with conn.transaction():
                            upsert_rows(conn, schema, rows[start : start + args.batch])
                    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                    print(
                        f"round {round_ + 1} {what}: {len(rows) / wall:,.0f} rows/s, client"
                        f" {cpu * 100_000 / len(rows):.2f} CPU-s per 100k rows",
                        flush=True,
                    )
                found = conn.execute(
                    """SELECT count(*), sum(price), md5(string_agg(concat_ws('|', pk, n, price, name, active, tags,
                              attrs, note), ',' ORDER BY pk)) FROM upserts"""
                ).fetchone()
                print(f"round {round_ + 1} stored: {found}", flush=True)


if __name__ == "__main__":
    main()
