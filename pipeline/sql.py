"""Run Spark SQL against a warehouse's metastore: ``python -m pipeline.sql --warehouse W "SQL"``.

Opens a fresh session with the same metastore settings as the pipeline (``conf/``), so
published tables and partitions are visible without any repair. Prints rows as
tab-separated text (with a header line); ``--limit`` caps the rows shown.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("statements", nargs="+", help="SQL statements; the last one's rows are printed")
    args = parser.parse_args(argv)

    from pipeline.spark import get_spark

    spark = get_spark(args.warehouse)
    result = None
    for statement in args.statements:
        result = spark.sql(statement)
    rows = result.limit(args.limit).collect()
    print("\t".join(result.columns))
    for row in rows:
        print("\t".join("" if v is None else str(v) for v in row))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
