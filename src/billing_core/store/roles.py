"""Least privilege on PostgreSQL (SPEC §10): the store is migrated by the role that owns
it and run by an application role that can only read and write rows.

`billing db grant ROLE` prints what the application role is given, `--apply` runs it as
the owner:

- CONNECT and TEMPORARY on the database (usage ingest stages rows in a temporary table;
  both are PUBLIC's by default, granted here for clusters that took them away);
- USAGE on the store's schema;
- SELECT, INSERT, UPDATE and DELETE on the store's tables, SELECT alone on
  `alembic_version` (only the owner migrates);
- USAGE and SELECT on its sequences (ids come from them);
- the same by default on the tables and sequences the owner creates later (a migration's
  new tables), so an upgrade does not lock the product out.

Nothing else: no TRUNCATE, TRIGGER or REFERENCES, no ownership. The role's earlier
privileges on the store's tables and sequences are revoked first, so running it again
leaves exactly these. Without ownership the role cannot disable, drop or replace the
triggers that freeze issued invoices, nor set `session_replication_role` (which only a
superuser can), so what they refuse stays refused.

A SQLite store has no roles: the file's permissions are its guard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from billing_core.store.engine import get_engine, safe_url

ROW_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
SEQUENCE_PRIVILEGES = "USAGE, SELECT"
READ_ONLY = ("alembic_version",)


class RoleError(ValueError):
    """The grants cannot be given as asked (one line saying why)."""


@dataclass
class Grants:
    statements: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    applies: bool = True  # False on SQLite: nothing to grant


SQLITE = (
    "{url}: a SQLite store has no roles: the file's permissions are its guard "
    "(readable and writable by the account that runs the product, and no one else)"
)


def grants(url: str, role: str, apply: bool = False) -> Grants:
    """The statements that give `role` row privileges on the store; run them as the
    owner when `apply`."""
    engine = get_engine(url)
    if engine.dialect.name != "postgresql":
        out = Grants(applies=False)
        out.warnings.append(SQLITE.format(url=safe_url(url)))
        return out
    _check_name(role)
    out = Grants()
    quote = engine.dialect.identifier_preparer.quote
    with engine.connect() as connection:
        store = _inspect(connection)
        _check(connection, store, role, apply, quote, out)
    statements = _statements(store, quote(role), quote)
    out.statements = [s + ";" for s in statements]
    if apply:
        try:
            with engine.begin() as connection:
                for statement in statements:
                    connection.execute(sa.text(statement))
        except sa.exc.DBAPIError as error:
            reason = str(error.orig).strip().splitlines()[0]
            raise RoleError(f"{safe_url(url)}: the grants were not applied: {reason}") from None
    return out


@dataclass
class _Store:
    """What the grants name: the store's schema, database, tables and sequences, its
    owner, and the role connected."""

    schema: str
    database: str
    tables: list[str]
    sequences: list[str]
    me: str
    owner: str


def _inspect(connection: sa.Connection) -> _Store:
    schema = connection.execute(sa.text("SELECT current_schema()")).scalar_one()
    database = connection.execute(sa.text("SELECT current_database()")).scalar_one()
    inspector = sa.inspect(connection)
    tables = sorted(inspector.get_table_names(schema))
    sequences = sorted(inspector.get_sequence_names(schema))
    me = connection.execute(sa.text("SELECT current_user")).scalar_one()
    return _Store(schema, database, tables, sequences, me, _owner(connection, schema))


def _check(
    connection: sa.Connection,
    store: _Store,
    role: str,
    apply: bool,
    quote: Callable[[str], str],
    out: Grants,
) -> None:
    """Refuse a role or a connection the grants cannot be given with; warn of the rest."""
    schema, owner = store.schema, store.owner
    found = connection.execute(
        sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = :role"), {"role": role}
    ).first()
    if found is None:
        if apply:
            raise RoleError(
                f"role {role} does not exist: create it first "
                f"(CREATE ROLE {quote(role)} LOGIN PASSWORD '…')"
            )
        out.warnings.append(f"role {role} does not exist yet: create it before applying")
    else:
        _check_role(connection, role, bool(found.rolsuper), owner)
        if _can_create(connection, role, schema):
            out.warnings.append(
                f"role {role} can create objects in schema {schema} (through PUBLIC or a "
                f"grant): as the owner, REVOKE CREATE ON SCHEMA {quote(schema)} "
                "FROM PUBLIC"
            )
    if apply and not _owns(connection, store.me, owner):
        raise RoleError(
            f"connected as {store.me}, who does not own the store (its owner is {owner}): "
            "run `billing db grant --apply` with the owner's BILLING_DATABASE_URL"
        )


def _statements(store: _Store, who: str, quote: Callable[[str], str]) -> list[str]:
    """The grants to the (quoted) role `who`, its earlier privileges revoked first."""
    schema, tables = store.schema, store.tables
    names = [f"{quote(schema)}.{quote(t)}" for t in tables]
    writable = [n for t, n in zip(tables, names, strict=True) if t not in READ_ONLY]
    read_only = [n for t, n in zip(tables, names, strict=True) if t in READ_ONLY]
    sequence_names = [f"{quote(schema)}.{quote(s)}" for s in store.sequences]
    statements = [
        f"GRANT CONNECT, TEMPORARY ON DATABASE {quote(store.database)} TO {who}",
        f"GRANT USAGE ON SCHEMA {quote(schema)} TO {who}",
    ]
    if names:
        statements.append(f"REVOKE ALL ON TABLE {', '.join(names)} FROM {who}")
    if writable:
        statements.append(f"GRANT {ROW_PRIVILEGES} ON TABLE {', '.join(writable)} TO {who}")
    if read_only:
        statements.append(f"GRANT SELECT ON TABLE {', '.join(read_only)} TO {who}")
    if sequence_names:
        statements += [
            f"REVOKE ALL ON SEQUENCE {', '.join(sequence_names)} FROM {who}",
            f"GRANT {SEQUENCE_PRIVILEGES} ON SEQUENCE {', '.join(sequence_names)} TO {who}",
        ]
    later = f"ALTER DEFAULT PRIVILEGES FOR ROLE {quote(store.owner)} IN SCHEMA {quote(schema)}"
    return statements + [
        f"{later} GRANT {ROW_PRIVILEGES} ON TABLES TO {who}",
        f"{later} GRANT {SEQUENCE_PRIVILEGES} ON SEQUENCES TO {who}",
    ]


def _check_name(role: str) -> None:
    if not role or "\x00" in role:
        raise RoleError("ROLE: a role name is required")
    if len(role.encode()) > 63:
        raise RoleError(f"ROLE: {role[:20]}…: longer than PostgreSQL's 63 bytes")
    if role.lower() == "public":
        raise RoleError("ROLE: PUBLIC is every role: name the application's own role")
    if role.startswith("pg_"):
        raise RoleError(f"ROLE: {role}: the pg_ prefix is PostgreSQL's own roles'")


def _owner(connection: sa.Connection, schema: str) -> str:
    """The role that owns the store's tables (the one that migrated it)."""
    return connection.execute(
        sa.text(
            "SELECT pg_get_userbyid(c.relowner) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relname = 'alembic_version'"
        ),
        {"schema": schema},
    ).scalar_one()


def _owns(connection: sa.Connection, me: str, owner: str) -> bool:
    return bool(
        connection.execute(
            sa.text(
                "SELECT rolsuper OR pg_has_role(:me, :owner, 'USAGE') "
                "FROM pg_roles WHERE rolname = :me"
            ),
            {"me": me, "owner": owner},
        ).scalar()
    )


def _check_role(connection: sa.Connection, role: str, superuser: bool, owner: str) -> None:
    """Refuse a role that would keep the powers the grants are meant to withhold."""
    if superuser:
        raise RoleError(
            f"role {role} is a superuser: it bypasses every privilege (and may turn the "
            "triggers that freeze issued invoices off); the application role must not be one"
        )
    if role == owner:
        raise RoleError(
            f"role {role} owns the store: the application role must be another role "
            "(the owner can drop or disable the triggers that freeze issued invoices)"
        )
    member = connection.execute(
        sa.text("SELECT pg_has_role(:role, :owner, 'MEMBER')"), {"role": role, "owner": owner}
    ).scalar()
    if member:
        raise RoleError(
            f"role {role} is a member of {owner}, which owns the store: it could act as the "
            "owner; the application role must not be"
        )


def _can_create(connection: sa.Connection, role: str, schema: str) -> bool:
    return bool(
        connection.execute(
            sa.text("SELECT has_schema_privilege(:role, :schema, 'CREATE')"),
            {"role": role, "schema": schema},
        ).scalar()
    )
