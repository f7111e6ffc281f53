"""ORM models for the recipe: the outbox table, and a business table.

The outbox model maps only the columns a writer sets. The server fills in
the rest (id, message_id, created_at, available_at, attempts, ...) from the
table's defaults; `eager_defaults` reads message_id back with RETURNING, so
it is known after `session.flush()`.

In a service you would write the classes once, with your schema:

    class OutboxEvent(Base):
        __tablename__ = "outbox"
        __table_args__ = {"schema": "public"}
        ...

The recipe builds them at run time instead, because the tests choose the
schema and table name ("t_xxx.outbox").
"""
from sqlalchemy import (BigInteger, Column, DateTime, FetchedValue, Identity,
                        Integer, Interval, LargeBinary, Text, text)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import declarative_base


def declare(table):
    """Return (Base, OutboxEvent, Order) for the outbox table `table`.

    `table` is "outbox" or "schema.outbox"; Order goes in the same schema.
    """
    schema, _, name = table.rpartition(".")
    args = {"schema": schema or None}
    Base = declarative_base()

    class OutboxEvent(Base):
        __tablename__ = name
        __table_args__ = args
        # Read message_id (a server default) back in the INSERT's RETURNING.
        __mapper_args__ = {"eager_defaults": True}

        # "generated always as identity": never set it.
        id = Column(BigInteger, Identity(always=True), primary_key=True)
        exchange = Column(Text, nullable=False)  # '' is the default exchange
        routing_key = Column(Text, nullable=False)
        payload = Column(LargeBinary, nullable=False)  # bytea: the body, as is
        content_type = Column(Text)
        headers = Column(JSONB)  # a JSON object, or None
        partition_key = Column(Text)  # rows of one key go out in order
        # AMQP properties (migration 005); None leaves them unset.
        type = Column(Text)
        correlation_id = Column(Text)
        reply_to = Column(Text)
        expiration = Column(Interval)  # a datetime.timedelta
        priority = Column(Integer)
        content_encoding = Column(Text)
        app_id = Column(Text)
        # Server defaults: gen_random_uuid() and now(). Set available_at only
        # to delay an event.
        message_id = Column(UUID(as_uuid=True), server_default=FetchedValue())
        available_at = Column(DateTime(timezone=True), server_default=FetchedValue())

    class Order(Base):
        """The business change each transaction makes with its event."""
        __tablename__ = "recipe_orders"
        __table_args__ = args

        id = Column(Text, primary_key=True)
        state = Column(Text, nullable=False)

    return Base, OutboxEvent, Order


def enqueue_statement(table, payload_type):
    """Return the statement that calls the table's outbox_enqueue function.

    outbox_enqueue has three overloads, told apart by the payload's type:
    bytea (sent as is), text and jsonb (sent as UTF-8, content type
    text/plain or application/json by default). The casts choose one:
    without them, a driver that sends untyped parameters (asyncpg) gets the
    text overload. Write `cast(:p as bytea)`, not `:p::bytea`: text() would
    not see `:p` as a parameter there.
    """
    if payload_type not in ("bytea", "jsonb"):
        raise ValueError(payload_type)
    schema, _, name = table.rpartition(".")
    # Quoted as is: names with a double quote in them are not handled.
    fn = '"%s_enqueue"' % name
    if schema:
        fn = '"%s".%s' % (schema, fn)
    return text(
        "select " + fn + "(exchange => :exchange, routing_key => :routing_key,"
        " payload => cast(:payload as " + payload_type + "),"
        " headers => cast(:headers as jsonb), content_type => :content_type)"
    )
