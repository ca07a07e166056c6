"""Create the reference app's SQLite ``items`` table with N rows.

    python3 seed_db.py PATH N

Drops any existing ``items`` table and inserts ids 1..N in one transaction
(``executemany`` over a generator), so a million rows take a few seconds.
Row i is named ``item-i`` with price ``100 + i % 10000`` cents.
"""

import sqlite3
import sys


def rows(n: int):
    for i in range(1, n + 1):
        yield (i, f"item-{i}", f"description of item {i}", 100 + i % 10000)


def seed(path: str, n: int) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("DROP TABLE IF EXISTS items")
            conn.execute(
                "CREATE TABLE items ("
                " id INTEGER PRIMARY KEY,"
                " name TEXT,"
                " description TEXT,"
                " price_cents INTEGER)"
            )
            conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", rows(n))
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    seed(argv[1], int(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
