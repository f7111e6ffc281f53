#!/usr/bin/python3
"""A Python consumer that does its work once per message, with psycopg2 and pika.

This is the example of docs/inbox.md, run by inbox/python_test.go. Usage:

    consumer.py QUEUE CONSUMER INBOX_TABLE EFFECTS_TABLE [--crash-after-commit ID] [--fail-once ID]

with OUTBOX_DATABASE_URL (libpq URL or DSN) and OUTBOX_AMQP_URL in the
environment, so that no password shows in the process list. It consumes
QUEUE; for each message it claims the message_id through the inbox's claim
function (INBOX_TABLE's name + "_claim") in the transaction that does the
work, which is one row in EFFECTS_TABLE. It prints one JSON line per
delivery, {"id": ..., "outcome": "processed" | "duplicate" | "failed" |
"rejected"}, and exits 0 after a message of type "stop".

Faults, for the test: --crash-after-commit ID exits the process (code 3)
right after the commit of ID's work, before its ack; --fail-once ID makes the
work of ID raise once, after it wrote its effect.
"""
import argparse
import json
import os
import sys
import uuid

import pika
import psycopg2
from psycopg2 import sql


def table_ident(name):
    """'schema.table' or 'table' -> an sql.Identifier (names as written)."""
    schema, _, table = name.rpartition(".")
    return sql.Identifier(*([schema] if schema else []), table)


# --- example: handle ---
def handle(db, claim_fn, consumer, message_id, work):
    """Run work(cursor) once per message_id; True if it ran, False for a duplicate.

    The claim and the work share one transaction: if work raises, both roll
    back and the message is processed again when it is redelivered.
    """
    with db:  # one transaction: commit on success, rollback on an exception
        with db.cursor() as cur:
            cur.execute(sql.SQL("select {}(%s, %s)").format(claim_fn), (consumer, message_id))
            if not cur.fetchone()[0]:
                return False  # a duplicate: its work is committed already
            work(cur)
    return True


def on_message(ch, method, props, body, db, claim_fn, consumer, work):
    try:
        uuid.UUID(props.message_id or "")
    except ValueError:
        # No message_id, or not a UUID: no redelivery would fix it.
        ch.basic_reject(method.delivery_tag, requeue=False)  # dead-lettered
        return "rejected"
    try:
        first = handle(db, claim_fn, consumer, props.message_id, lambda cur: work(cur, props, body))
    except psycopg2.errors.SerializationFailure:
        # REPEATABLE READ or SERIALIZABLE: a concurrent claim of the same id.
        ch.basic_nack(method.delivery_tag, requeue=True)  # retry the whole transaction
        return "failed"
    except Exception:
        # Rolled back: redeliver. A quorum queue's x-delivery-limit bounds
        # how often a message that always fails comes back.
        ch.basic_nack(method.delivery_tag, requeue=True)
        return "failed"
    ch.basic_ack(method.delivery_tag)  # only after the commit
    return "processed" if first else "duplicate"
# --- end example ---


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("queue")
    ap.add_argument("consumer")
    ap.add_argument("inbox_table")
    ap.add_argument("effects_table")
    ap.add_argument("--crash-after-commit")
    ap.add_argument("--fail-once")
    args = ap.parse_args()

    inbox = table_ident(args.inbox_table)
    # The claim function is named after the table: inbox -> inbox_claim.
    claim_fn = sql.Identifier(*inbox.strings[:-1], inbox.strings[-1] + "_claim")
    effects = table_ident(args.effects_table)
    failed = set()

    def work(cur, props, body):
        cur.execute(sql.SQL("insert into {} (message_id, consumer, body) values (%s, %s, %s)").format(effects),
                    (props.message_id, args.consumer, body.decode()))
        if props.message_id == args.fail_once and props.message_id not in failed:
            failed.add(props.message_id)
            raise RuntimeError("the work fails once")

    db = psycopg2.connect(os.environ["OUTBOX_DATABASE_URL"], connect_timeout=10)
    amqp = pika.BlockingConnection(pika.URLParameters(os.environ["OUTBOX_AMQP_URL"]))
    ch = amqp.channel()
    ch.basic_qos(prefetch_count=1)
    for method, props, body in ch.consume(args.queue, inactivity_timeout=30):
        if method is None:
            sys.exit("no message for 30s")
        if props.type == "stop":
            ch.basic_ack(method.delivery_tag)
            break
        if args.crash_after_commit and props.message_id == args.crash_after_commit:
            # Killed between the commit and the ack: the work is done, the
            # broker does not know, and redelivers the message.
            handle(db, claim_fn, args.consumer, props.message_id, lambda cur: work(cur, props, body))
            print(json.dumps({"id": props.message_id, "outcome": "crashed"}), flush=True)
            os._exit(3)
        outcome = on_message(ch, method, props, body, db, claim_fn, args.consumer, work)
        print(json.dumps({"id": props.message_id, "outcome": outcome}), flush=True)
    ch.cancel()
    amqp.close()
    db.close()


if __name__ == "__main__":
    main()
