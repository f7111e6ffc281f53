"""The Python path: commit -> receipt latency of a psycopg2 writer and a pika consumer.

outbox-bench runs this with /usr/bin/python3 (Debian's python3-psycopg2 and
python3-pika) while a relay runs on SCHEMA.TABLE:

    python3 - SCHEMA TABLE QUEUE RATE SECONDS PAYLOAD_BYTES < python_latency.py

with OUTBOX_DATABASE_URL (a libpq DSN) and OUTBOX_AMQP_URL in the environment,
so that no password shows in the process list. A consumer thread consumes
QUEUE; the main thread commits RATE events a second for SECONDS, each in its
own transaction through TABLE_enqueue() with a unique id in the payload, to
the default exchange with QUEUE as routing key. Both times are time.time() of
this one process. It prints one JSON line: counts and p50/p95/p99/max in ms.
"""
import json
import os
import sys
import threading
import time

import pika
import psycopg2
from psycopg2 import sql

CONNECT_TIMEOUT_S = 10
RECEIVE_TIMEOUT_S = 10  # for the last events, after the last commit


class Latencies:
    """Pairs each id's commit time with its receipt time; either may come first."""

    def __init__(self):
        self.lock = threading.Lock()
        self.committed = {}
        self.received = {}
        self.got = []
        self.all_in = threading.Event()
        self.want = None

    def commit(self, key, at):
        with self.lock:
            r = self.received.pop(key, None)
            if r is None:
                self.committed[key] = at
            else:
                self._pair(max(0.0, r - at))

    def receive(self, key, at):
        with self.lock:
            c = self.committed.pop(key, None)
            if c is None:
                self.received[key] = at
            else:
                self._pair(max(0.0, at - c))

    def expect(self, n):
        with self.lock:
            self.want = n
            self._check()

    def _pair(self, d):
        self.got.append(d)
        self._check()

    def _check(self):
        if self.want is not None and len(self.got) >= self.want:
            self.all_in.set()


def consume(amqp_url, queue, lat, ready, state):
    """Consumes queue until state["stop"]() is called; sets ready once the
    consumer is registered, or state["err"] if it could not be."""
    try:
        params = pika.URLParameters(amqp_url)
        params.socket_timeout = CONNECT_TIMEOUT_S
        conn = pika.BlockingConnection(params)
        ch = conn.channel()

        def on_message(_ch, _method, _props, body):
            at = time.time()
            lat.receive(json.loads(body)["id"], at)

        ch.basic_consume(queue=queue, on_message_callback=on_message, auto_ack=True)
    except Exception as e:  # reported by the main thread
        state["err"] = e
        ready.set()
        return
    state["stop"] = lambda: conn.add_callback_threadsafe(ch.stop_consuming)
    ready.set()
    try:
        ch.start_consuming()
    finally:
        conn.close()


def quantile(s, q):
    return s[int(q * (len(s) - 1))] if s else 0.0


def main():
    schema, table, queue = sys.argv[1:4]
    rate, seconds, size = int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
    dsn, amqp_url = os.environ["OUTBOX_DATABASE_URL"], os.environ["OUTBOX_AMQP_URL"]
    fn = sql.Identifier(schema, table + "_enqueue")  # outbox -> outbox_enqueue
    query = sql.SQL("select {}(%s, %s, %s::jsonb)").format(fn)

    lat = Latencies()
    ready, state = threading.Event(), {}
    t = threading.Thread(target=consume, args=(amqp_url, queue, lat, ready, state))
    t.start()
    try:
        if not ready.wait(CONNECT_TIMEOUT_S * 2) or "err" in state:
            raise SystemExit("consume %s: %s" % (queue, state.get("err", "timed out")))
        conn = psycopg2.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S,
                                options="-c statement_timeout=%d" % (CONNECT_TIMEOUT_S * 1000))
        pad = "x" * max(0, size - 40)
        n = int(rate * seconds)
        start = time.time()
        try:
            for i in range(n):
                delay = start + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                key = "py-%d" % i
                with conn:  # one transaction per event: commits on leaving
                    with conn.cursor() as cur:
                        cur.execute(query, ("", queue, json.dumps({"id": key, "pad": pad})))
                lat.commit(key, time.time())
        finally:
            conn.close()
        lat.expect(n)
        lat.all_in.wait(RECEIVE_TIMEOUT_S)
    finally:
        if "stop" in state:
            state["stop"]()
        t.join()

    got = sorted(lat.got)
    if len(got) < n:
        raise SystemExit("received %d of %d events within %ds of the last commit" % (len(got), n, RECEIVE_TIMEOUT_S))
    ms = lambda s: round(s * 1000, 3)
    print(json.dumps({
        "events": n,
        "p50_ms": ms(quantile(got, 0.5)), "p95_ms": ms(quantile(got, 0.95)),
        "p99_ms": ms(quantile(got, 0.99)), "max_ms": ms(got[-1]),
    }), flush=True)


if __name__ == "__main__":
    main()
