"""A service that writes its business change and the websocket event in one
PostgreSQL transaction; the outbox relay publishes the event to every
Flask-SocketIO instance.

    OUTBOX_DATABASE_URL=postgres://app@localhost/app \
        /usr/bin/python3 service.py COMMITS [ROLLBACKS [CHANNEL [SCHEMA]]]

It commits COMMITS orders, each with an 'order' event, and before the first
ROLLBACKS of them also writes one that it rolls back: that event is never
published. It prints one JSON line per transaction: the event id, and
whether it was committed.
"""
import json
import os
import sys
import uuid

import psycopg2

commits = int(sys.argv[1])
rollbacks = int(sys.argv[2]) if len(sys.argv) > 2 else 0
channel = sys.argv[3] if len(sys.argv) > 3 else 'flask-socketio'
schema = sys.argv[4] if len(sys.argv) > 4 else 'public'

# The message python-socketio's pub/sub listener reads (see
# socketio/pubsub_manager.py): without 'namespace' the event is dropped.
ENQUEUE = """
select outbox_enqueue(exchange => %(channel)s, routing_key => '',
                      payload => %(message)s::text,
                      content_type => 'application/json',
                      partition_key => 'orders',
                      message_id => %(event_id)s::uuid)
"""


def write_order(conn, seq, commit):
    """Inserts an order and enqueues its event; commits or rolls back both."""
    order_id = str(uuid.uuid4())
    event_id = str(uuid.uuid4())
    message = {
        'method': 'emit',
        'event': 'order',
        # event_id lets clients drop a duplicate: delivery is at least once,
        # and the AMQP message-id (the same UUID here, for the relay's logs)
        # never reaches a Socket.IO handler.
        'data': {'event_id': event_id, 'order_id': order_id, 'seq': seq},
        'namespace': '/',
        'room': None,       # None: every client of the namespace
        'skip_sid': None,
        'callback': None,   # callbacks cannot cross the outbox
        'host_id': 'outbox',
    }
    with conn.cursor() as cur:
        cur.execute('insert into orders (id, seq) values (%s, %s)',
                    (order_id, seq))
        cur.execute(ENQUEUE, {'channel': channel, 'event_id': event_id,
                              'message': json.dumps(message)})
    if commit:
        conn.commit()
    else:
        conn.rollback()
    print(json.dumps({'event_id': event_id, 'seq': seq,
                      'committed': commit}), flush=True)


conn = psycopg2.connect(os.environ['OUTBOX_DATABASE_URL'],
                        options='-c search_path=' + schema)
with conn.cursor() as cur:
    cur.execute('create table if not exists orders'
                ' (id uuid primary key, seq int not null)')
conn.commit()
for seq in range(1, commits + 1):
    if seq <= rollbacks:
        write_order(conn, seq, commit=False)
    write_order(conn, seq, commit=True)
conn.close()
