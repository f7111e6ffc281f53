"""A websocket client of one instance: prints one JSON line per event it
receives, in the order they arrive, and exits after COUNT events named EVENT
or TIMEOUT seconds.

    /usr/bin/python3 client.py http://127.0.0.1:5001 order 100 30

Exit status 0 if COUNT events came, 1 if the time ran out first.
"""
import json
import sys
import threading

import engineio
import socketio

url, event = sys.argv[1], sys.argv[2]
count, timeout = int(sys.argv[3]), float(sys.argv[4])


class InOrderEngineIOClient(engineio.Client):
    """Runs each message's handler before reading the next message.

    engineio.Client (4.3) starts a thread per incoming message, so two
    handlers can run at once and in either order. A browser's
    socket.io-client handles events one at a time, in order; so does this.
    """

    def _trigger_event(self, event, *args, **kwargs):
        kwargs['run_async'] = False
        return super()._trigger_event(event, *args, **kwargs)


class InOrderClient(socketio.Client):
    def _engineio_client_class(self):
        return InOrderEngineIOClient


sio = InOrderClient()
received = 0
done = threading.Event()


@sio.event
def connect():
    print(json.dumps({'connected': sio.sid}), flush=True)


@sio.on('*')
def any_event(name, data):
    # '*' catches every event; the test also sends 'probe' events.
    global received
    print(json.dumps({'event': name, 'data': data}), flush=True)
    if name == event:
        received += 1
        if received == count:
            done.set()


# websocket only (python3-websocket): no long-polling fallback to hide a
# broken websocket setup.
sio.connect(url, transports=['websocket'])
done.wait(timeout)
sio.disconnect()
sys.exit(0 if done.is_set() else 1)
