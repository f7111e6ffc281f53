#!/usr/bin/python3
"""Enqueue outbox events in a SQLAlchemy Session's transaction (sync).

Usage: sync_service.py TABLE EXCHANGE DRIVER

DRIVER is psycopg2 or psycopg (psycopg 3). TABLE is the outbox table
("outbox" or "schema.outbox"); EXCHANGE is where the events go.
OUTBOX_DATABASE_URL holds the postgres:// URL (in the environment: it may
hold a password).

Four transactions commit an order and an event each: through the ORM model
and through outbox_enqueue(), with a bytea and with a JSON payload. Two
more write an order and an event and roll back, one explicitly, one by an
exception. Every event is printed as one JSON line (events.report).
"""
import sys

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import events
import models
import psycopg_dialect


def enqueue(session, OutboxEvent, table, ev):
    """Write ev in the session's transaction; return its message_id."""
    if ev.via == "orm":
        row = OutboxEvent(**ev.columns())
        session.add(row)
        session.flush()  # INSERT ... RETURNING id, message_id, available_at
        return row.message_id
    stmt = models.enqueue_statement(table, ev.kind)
    return session.execute(stmt, ev.arguments()).scalar_one()


def main():
    table, exchange, driver = sys.argv[1:4]
    psycopg_dialect.register()  # postgresql+psycopg on SQLAlchemy 1.4
    engine = create_engine(events.database_url(driver), future=True)
    Base, OutboxEvent, Order = models.declare(table)
    Base.metadata.create_all(engine, tables=[Order.__table__])

    # Committed: session.begin() commits when the block ends, the order and
    # the event together.
    for ev in events.plan(driver, exchange):
        with Session(engine) as session, session.begin():
            session.add(Order(id=ev.order_id, state="paid"))
            events.report(ev, enqueue(session, OutboxEvent, table, ev))

    # Rolled back explicitly: neither the order nor the event remains.
    ev = events.Event(driver, exchange, "orm", "bytea", "rollback-explicit")
    with Session(engine) as session:
        session.begin()
        session.add(Order(id=ev.order_id, state="paid"))
        session.flush()  # the order's INSERT runs now: the rollback undoes it
        events.report(ev, enqueue(session, OutboxEvent, table, ev), committed=False)
        session.rollback()

    # Rolled back by an exception raised inside the block.
    ev = events.Event(driver, exchange, "function", "jsonb", "rollback-exception")
    try:
        with Session(engine) as session, session.begin():
            session.add(Order(id=ev.order_id, state="paid"))
            session.flush()
            events.report(ev, enqueue(session, OutboxEvent, table, ev), committed=False)
            raise events.Abort("payment declined")
    except events.Abort:
        pass
    engine.dispose()


if __name__ == "__main__":
    main()
