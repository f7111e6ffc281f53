#!/usr/bin/python3
"""Enqueue outbox events in an AsyncSession's transaction (asyncpg).

Usage: async_service.py TABLE EXCHANGE [--pooler]

The same events as sync_service.py, with SQLAlchemy's asyncio extension and
asyncpg. --pooler is for a transaction-mode pooler such as PgBouncer: it
turns off asyncpg's and SQLAlchemy's prepared-statement caches, which keep
statements on one server connection and use them on another.
OUTBOX_DATABASE_URL holds the postgres:// URL (in the environment).
"""
import asyncio
import sys
import uuid

import asyncpg

from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

import events
import models


class UniqueNames(asyncpg.Connection):
    """Names prepared statements with a UUID instead of a per-process counter.

    SQLAlchemy 1.4's asyncpg dialect prepares every statement, named
    __asyncpg_stmt_<n>__; behind a transaction-mode pooler two processes
    reach the same server connection with the same name ("prepared
    statement ... already exists"). SQLAlchemy 2.0 has connect_args
    prepared_statement_name_func for this. _get_unique_id is asyncpg's own
    (private) method: check it when you upgrade asyncpg.
    """

    def _get_unique_id(self, prefix):
        return "__asyncpg_%s_%s__" % (prefix, uuid.uuid4())


def make_engine(pooler):
    url = events.database_url("asyncpg")
    if not pooler:
        return create_async_engine(url)
    # statement_cache_size is asyncpg's own cache (connect_args);
    # prepared_statement_cache_size is the SQLAlchemy dialect's, a query
    # parameter of the URL.
    return create_async_engine(url + "?prepared_statement_cache_size=0",
                               connect_args={"statement_cache_size": 0, "connection_class": UniqueNames})


async def enqueue(session, OutboxEvent, table, ev):
    """Write ev in the session's transaction; return its message_id."""
    if ev.via == "orm":
        row = OutboxEvent(**ev.columns())
        session.add(row)
        await session.flush()  # INSERT ... RETURNING id, message_id, available_at
        return row.message_id
    # asyncpg sends parameters untyped: the casts in the statement choose
    # the bytea or jsonb overload (without them, PostgreSQL picks text).
    stmt = models.enqueue_statement(table, ev.kind)
    return (await session.execute(stmt, ev.arguments())).scalar_one()


async def main():
    table, exchange = sys.argv[1:3]
    engine = make_engine("--pooler" in sys.argv[3:])
    Base, OutboxEvent, Order = models.declare(table)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all, tables=[Order.__table__])

    # Committed: the block commits when it ends, the order and the event
    # together.
    for ev in events.plan("asyncpg", exchange):
        async with AsyncSession(engine) as session, session.begin():
            session.add(Order(id=ev.order_id, state="paid"))
            events.report(ev, await enqueue(session, OutboxEvent, table, ev))

    # Rolled back explicitly: neither the order nor the event remains.
    ev = events.Event("asyncpg", exchange, "orm", "bytea", "rollback-explicit")
    async with AsyncSession(engine) as session:
        await session.begin()
        session.add(Order(id=ev.order_id, state="paid"))
        await session.flush()  # the order's INSERT runs now: the rollback undoes it
        events.report(ev, await enqueue(session, OutboxEvent, table, ev), committed=False)
        await session.rollback()

    # Rolled back by an exception raised inside the block.
    ev = events.Event("asyncpg", exchange, "function", "jsonb", "rollback-exception")
    try:
        async with AsyncSession(engine) as session, session.begin():
            session.add(Order(id=ev.order_id, state="paid"))
            await session.flush()
            events.report(ev, await enqueue(session, OutboxEvent, table, ev), committed=False)
            raise events.Abort("payment declined")
    except events.Abort:
        pass
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
