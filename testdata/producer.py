#!/usr/bin/python3
"""Write outbox events from Python with psycopg2, in the service's own transaction.

This is the README's Python example, run by the tests. Usage:

    producer.py DSN TABLE EXCHANGE COUNT

It commits COUNT events through outbox_enqueue() (the function of TABLE) and
writes one more in a transaction that rolls back. It prints the message ids of
the committed events, one a line, and "rolled back <id>" for the other.
"""
import json
import sys

import psycopg2
from psycopg2 import sql


def main():
    dsn, table, exchange, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    schema, _, name = table.rpartition(".")
    # The enqueue function is named after the table: outbox -> outbox_enqueue.
    fn = sql.Identifier(*( [schema] if schema else [] ), name + "_enqueue")
    conn = psycopg2.connect(dsn)
    try:
        with conn:  # one transaction: commits on success, rolls back on error
            with conn.cursor() as cur:
                cur.execute("create temp table if not exists orders (id int, state text)")
                for i in range(count):
                    cur.execute("insert into orders values (%s, 'paid')", (i,))
                    cur.execute(
                        sql.SQL("select {}(%s, %s, %s::jsonb, %s::jsonb, %s)").format(fn),
                        (exchange, "order.paid", json.dumps({"order": i}),
                         json.dumps({"source": "python", "seq": i}), "order-%d" % i),
                    )
                    print(cur.fetchone()[0], flush=True)
        try:
            with conn:
                with conn.cursor() as cur:
                    cur.execute(
                        sql.SQL("select {}(%s, %s, %s::bytea)").format(fn),
                        (exchange, "order.cancelled", psycopg2.Binary(b"never sent")),
                    )
                    print("rolled back", cur.fetchone()[0], flush=True)
                    raise RuntimeError("roll back")
        except RuntimeError:
            pass
    finally:
        conn.close()


if __name__ == "__main__":
    main()
