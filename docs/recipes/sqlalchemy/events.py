"""What the recipe's services enqueue, and how they report it.

Shared by sync_service.py and async_service.py, so that every driver writes
the same events and prints them the same way for the tests.
"""
import base64
import json
import os
import sys
import uuid


class Abort(Exception):
    """Raised inside a transaction to roll it back."""


class Event:
    """One event, and the order written in the same transaction.

    via is "orm" (an OutboxEvent row) or "function" (outbox_enqueue); kind
    is "bytea" (binary payload) or "jsonb" (a JSON document). The order's
    id is unique to this run, so that a service may run more than once.
    """

    def __init__(self, driver, exchange, via, kind, what):
        self.driver, self.exchange, self.via, self.kind = driver, exchange, via, kind
        self.order_id = "%s-%s-%s" % (driver, what, uuid.uuid4().hex[:8])
        self.routing_key = "order.paid"
        self.headers = {"driver": driver, "via": via}
        if kind == "bytea":
            # Not UTF-8: bytea carries any bytes, exactly.
            self.payload = b"\x00\xff\xfe binary from " + driver.encode()
            self.content_type = "application/octet-stream"
        else:
            # Compact, keys unsorted: the jsonb overload sends PostgreSQL's
            # rendering, {"a": [1, 2], "z": 1, ...}; the ORM sends these bytes.
            self.payload = json.dumps({"z": 1, "a": [1, 2], "order": self.order_id},
                                      separators=(",", ":"))
            self.content_type = "application/json"

    def columns(self):
        """The OutboxEvent columns: payload is bytes (bytea), headers a dict."""
        payload = self.payload if self.kind == "bytea" else self.payload.encode()
        return dict(exchange=self.exchange, routing_key=self.routing_key, payload=payload,
                    content_type=self.content_type, headers=self.headers)

    def arguments(self):
        """The parameters of models.enqueue_statement: JSON goes as text, cast in SQL."""
        return dict(exchange=self.exchange, routing_key=self.routing_key, payload=self.payload,
                    headers=json.dumps(self.headers), content_type=self.content_type)


def plan(driver, exchange):
    """The four committed events: ORM and function, bytea and jsonb."""
    return [Event(driver, exchange, via, kind, via + "-" + kind)
            for via in ("orm", "function") for kind in ("bytea", "jsonb")]


def report(ev, message_id, committed=True):
    """Print the event as one JSON line, for the tests."""
    payload = ev.payload if isinstance(ev.payload, bytes) else ev.payload.encode()
    print(json.dumps({
        "driver": ev.driver, "via": ev.via, "kind": ev.kind, "order": ev.order_id,
        "message_id": str(message_id), "committed": committed,
        "payload": base64.b64encode(payload).decode(),
    }), flush=True)


def database_url(driver):
    """OUTBOX_DATABASE_URL (postgres://...) as SQLAlchemy's URL for driver.

    Only the URL form is converted; a key=value DSN is refused.
    """
    url = os.environ["OUTBOX_DATABASE_URL"]
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgres", "postgresql"):
        sys.exit("OUTBOX_DATABASE_URL must be a postgres:// URL")
    return "postgresql+%s://%s" % (driver, rest)
