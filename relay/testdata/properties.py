"""Enqueue rows with and without AMQP properties through outbox_enqueue(),
as a Python service would, then print what a pika consumer receives.

Usage: properties.py ENQUEUE_FUNCTION EXCHANGE QUEUE
OUTBOX_DATABASE_URL and OUTBOX_AMQP_URL name the servers (in the environment:
they may hold passwords). Prints one JSON object per delivery, with each
property's value and its Python type, and exits after both have arrived.
"""
import json
import os
import sys

import pika
import psycopg2

fn, exchange, queue = sys.argv[1:4]

conn = psycopg2.connect(os.environ["OUTBOX_DATABASE_URL"])
with conn:
    with conn.cursor() as cur:
        # Every property, by name. fn is a quoted identifier made by the test.
        cur.execute(
            "select " + fn + "(exchange => %s, routing_key => 'job.completed',"
            " payload => %s::jsonb, type => 'job.completed',"
            " correlation_id => 'req-42', reply_to => 'api.replies',"
            " expiration => '30 seconds', priority => 5,"
            " content_encoding => 'identity', app_id => 'py-producer',"
            " message_id => '6f1c1b6e-9d4a-4c4e-8a57-3c1d2a9b0e11')",
            (exchange, json.dumps({"id": 7})))
        # A call written before the properties existed.
        cur.execute("select " + fn + "(%s, 'job.started', %s::jsonb, %s::jsonb)",
                    (exchange, json.dumps({"id": 8}), json.dumps({"tenant": "acme"})))
conn.close()

params = pika.URLParameters(os.environ["OUTBOX_AMQP_URL"])
mq = pika.BlockingConnection(params)
ch = mq.channel()
seen = 0
for method, props, body in ch.consume(queue, inactivity_timeout=30):
    if method is None:
        sys.exit("timed out waiting for messages")
    out = {"routing_key": method.routing_key, "body": body.decode()}
    for name in ("message_id", "type", "correlation_id", "reply_to", "expiration",
                 "priority", "content_encoding", "app_id", "content_type",
                 "delivery_mode", "timestamp"):
        value = getattr(props, name)
        out[name] = value
        out[name + "_type"] = type(value).__name__
    out["headers"] = props.headers
    print(json.dumps(out), flush=True)
    ch.basic_ack(method.delivery_tag)
    seen += 1
    if seen == 2:
        break
ch.cancel()
mq.close()
