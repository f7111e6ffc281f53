"""One Flask-SocketIO instance. Run several: each emits, to its own websocket
clients, every event published on the channel's RabbitMQ exchange.

    OUTBOX_AMQP_URL=amqp://guest:guest@localhost:5672/ \
        /usr/bin/python3 server.py 5001 [channel]

The channel (default 'flask-socketio') is the name of the fanout exchange that
every instance, and the outbox relay, use. Nothing here is specific to the
outbox: the instance re-emits whatever its KombuManager receives.
"""
import eventlet

# First, before other imports: kombu needs eventlet's patched sockets
# (KombuManager refuses to start without them).
eventlet.monkey_patch()

import os  # noqa: E402
import sys  # noqa: E402

from flask import Flask  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402

port = int(sys.argv[1])
channel = sys.argv[2] if len(sys.argv) > 2 else 'flask-socketio'

app = Flask(__name__)
# message_queue makes Flask-SocketIO use python-socketio's KombuManager: it
# binds a queue of its own to the exchange `channel` and emits what arrives.
# Eventlet serves the websocket transport (threading mode would need the
# simple-websocket package).
socketio = SocketIO(app, async_mode='eventlet', channel=channel,
                    message_queue=os.environ['OUTBOX_AMQP_URL'])


@socketio.on('connect')
def connect():
    # A client that connects should fetch the current state here (or over
    # HTTP): events published while it, or this instance, was away are gone.
    pass


if __name__ == '__main__':
    socketio.run(app, host='127.0.0.1', port=port)
