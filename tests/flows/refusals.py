"""A store that refuses a step's writes, the way an operator's store can: a privilege taken
away, a disk that is full. The error is the store's, not a family's, so the step is not
split family by family: it fails and is retried as a whole."""

from __future__ import annotations

from contextlib import contextmanager

from tests.conftest import Store


def refuse_inserts(store: Store, table: str) -> None:
    """Every INSERT into `table` fails with an error of the store (an OperationalError)."""
    name = f"refuse_{table}"
    if store.backend == "sqlite":
        # A trigger whose body names a table that does not exist fails when it fires.
        store_execute(
            store,
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} "
            "BEGIN INSERT INTO no_such_table VALUES (1); END",
        )
    else:
        store_execute(
            store,
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'could not extend file: No space left on device' "
            "USING ERRCODE = '53100'; END $$",
        )
        store_execute(
            store,
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()",
        )


def accept_inserts(store: Store, table: str) -> None:
    """The fix: `table` takes inserts again."""
    name = f"refuse_{table}"
    if store.backend == "sqlite":
        store_execute(store, f"DROP TRIGGER {name}")
    else:
        store_execute(store, f"DROP TRIGGER {name} ON {table}")
        store_execute(store, f"DROP FUNCTION {name}()")


def store_execute(store: Store, sql: str) -> None:
    import sqlalchemy as sa

    from billing_core.store.engine import get_engine

    with get_engine(store.url).begin() as connection:
        connection.execute(sa.text(sql))


@contextmanager
def refusing_inserts(store: Store, table: str):
    refuse_inserts(store, table)
    try:
        yield
    finally:
        accept_inserts(store, table)
