"""postgresql+psycopg:// (psycopg 3) for SQLAlchemy 1.4, which lacks it.

SQLAlchemy 2.0 has this dialect built in; Debian 12 ships SQLAlchemy 1.4.46
and psycopg 3.1. register() adds a minimal one on 1.4 and does nothing on
2.0. It covers what the recipe uses (ORM inserts, text() statements, jsonb,
bytea, uuid), not everything SQLAlchemy can do: on 1.4, psycopg2 is the
supported choice.
"""
import sqlalchemy
from sqlalchemy import util
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql import JSON, JSONB, UUID
from sqlalchemy.dialects.postgresql.base import PGDialect


class _UUID(UUID):
    # psycopg already returns uuid.UUID objects and takes them as parameters.
    def bind_processor(self, dialect):
        return None if self.as_uuid else super().bind_processor(dialect)

    def result_processor(self, dialect, coltype):
        if self.as_uuid:
            return None
        return lambda value: None if value is None else str(value)


class _JSONB(JSONB):
    # psycopg sends a str as text, which a jsonb column refuses: wrap it.
    def bind_processor(self, dialect):
        from psycopg.types.json import Jsonb
        return lambda value: None if value is None else Jsonb(value)


class _JSON(JSON):
    def bind_processor(self, dialect):
        from psycopg.types.json import Json
        return lambda value: None if value is None else Json(value)


class PGDialect_psycopg(PGDialect):
    driver = "psycopg"
    supports_statement_cache = True
    default_paramstyle = "pyformat"
    supports_sane_multi_rowcount = True
    colspecs = util.update_copy(PGDialect.colspecs, {UUID: _UUID, JSONB: _JSONB, JSON: _JSON})

    @classmethod
    def dbapi(cls):
        import psycopg
        return psycopg

    def create_connect_args(self, url):
        opts = url.translate_connect_args(username="user", database="dbname")
        opts.update(url.query)
        return [], opts

    def is_disconnect(self, e, connection, cursor):
        conn = getattr(connection, "dbapi_connection", connection)
        return isinstance(e, self.dbapi.OperationalError) and bool(getattr(conn, "closed", False))


def register():
    """Make postgresql+psycopg:// work on SQLAlchemy 1.4 (a no-op on 2.0)."""
    if sqlalchemy.__version__.startswith("1."):
        registry.register("postgresql.psycopg", __name__, "PGDialect_psycopg")
