"""Full-text indexes on plain tables, kept current by the database itself.

PostgreSQL: a stored generated `search_vector` tsvector column (weights A, B, C, D in column
order) with a GIN index. SQLite (embedded mode): an FTS5 table `<table>_fts` over the table's
columns (external content: the text is not stored twice), kept current by three triggers.

The models don't declare these: the migration that indexes a table calls `upgrade_ddl` and
`downgrade_ddl`, and `is_fulltext_object` keeps them out of autogenerate's comparison.

SQLite caveat: a batch migration (copy the table, drop it, rename the copy) on an indexed
table drops its triggers: recreate them afterwards with `sqlite_triggers`.
"""

import re
from collections.abc import Sequence

TS_CONFIG = "english"  # baked into the generated columns: changing it is a migration
VECTOR_COLUMN = "search_vector"
WEIGHTS = "ABCD"
# SQLite's bm25 column weights in the same ratios as PostgreSQL's defaults for A, B, C, D.
SQLITE_WEIGHTS = (1.0, 0.4, 0.2, 0.1)


def sqlite_rank(table: str, columns: int) -> str:
    """bm25 over `table`'s FTS5 table, columns weighted as on PostgreSQL (lower is better)."""
    weights = ", ".join(str(SQLITE_WEIGHTS[min(i, 3)]) for i in range(columns))
    return f"bm25({fts_table(table)}, {weights})"


# Snippet delimiters: control characters no reader types, replaced after HTML escaping.
MARK_START = "\x02"
MARK_END = "\x03"
_FTS_SUFFIXES = ("_fts", "_fts_data", "_fts_idx", "_fts_docsize", "_fts_config", "_fts_content")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


def _checked(*names: str) -> None:
    for name in names:
        if not _IDENT.match(name):
            raise ValueError(f"not a plain identifier: {name!r}")


def fts_table(table: str) -> str:
    return f"{table}_fts"


def vector_index(table: str) -> str:
    return f"ix_{table}_{VECTOR_COLUMN}"


def postgres_vector_expression(columns: Sequence[str]) -> str:
    parts = [
        f"setweight(to_tsvector('{TS_CONFIG}', coalesce({column}, '')), '{WEIGHTS[min(i, 3)]}')"
        for i, column in enumerate(columns)
    ]
    return " || ".join(parts)


def sqlite_triggers(table: str, columns: Sequence[str]) -> list[str]:
    _checked(table, *columns)
    fts = fts_table(table)
    names = ", ".join(columns)
    new = ", ".join(f"new.{c}" for c in columns)
    old = ", ".join(f"old.{c}" for c in columns)
    # Identifiers only, checked above: no value is ever formatted into these statements.
    insert = f"INSERT INTO {fts}(rowid, {names}) VALUES (new.id, {new});"  # noqa: S608
    remove = f"INSERT INTO {fts}({fts}, rowid, {names}) VALUES ('delete', old.id, {old});"  # noqa: S608
    return [
        f"CREATE TRIGGER {fts}_ai AFTER INSERT ON {table} BEGIN {insert} END",
        f"CREATE TRIGGER {fts}_ad AFTER DELETE ON {table} BEGIN {remove} END",
        # Only when an indexed column changes: a soft delete or a price change costs nothing.
        f"CREATE TRIGGER {fts}_au AFTER UPDATE OF {names} ON {table} BEGIN {remove} {insert} END",
    ]


def upgrade_ddl(dialect: str, table: str, columns: Sequence[str]) -> list[str]:
    """Statements that index `table` (primary key `id`) over `columns`, best first."""
    _checked(table, *columns)
    if dialect == "postgresql":
        return [
            f"ALTER TABLE {table} ADD COLUMN {VECTOR_COLUMN} tsvector GENERATED ALWAYS AS "
            f"({postgres_vector_expression(columns)}) STORED",
            f"CREATE INDEX {vector_index(table)} ON {table} USING gin ({VECTOR_COLUMN})",
        ]
    if dialect == "sqlite":
        fts = fts_table(table)
        return [
            f"CREATE VIRTUAL TABLE {fts} USING fts5({', '.join(columns)}, content='{table}', "
            "content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')",
            f"INSERT INTO {fts}({fts}) VALUES ('rebuild')",  # noqa: S608
            *sqlite_triggers(table, columns),
        ]
    raise ValueError(f"no full-text index for {dialect}")


def downgrade_ddl(dialect: str, table: str) -> list[str]:
    _checked(table)
    if dialect == "postgresql":
        return [
            f"DROP INDEX IF EXISTS {vector_index(table)}",
            f"ALTER TABLE {table} DROP COLUMN IF EXISTS {VECTOR_COLUMN}",
        ]
    if dialect == "sqlite":
        fts = fts_table(table)
        return [
            *(f"DROP TRIGGER IF EXISTS {fts}_{suffix}" for suffix in ("ai", "ad", "au")),
            f"DROP TABLE IF EXISTS {fts}",
        ]
    raise ValueError(f"no full-text index for {dialect}")


def is_fulltext_object(name: str | None, type_: str) -> bool:
    """For Alembic's `include_object`: the objects above, which no model declares."""
    if name is None:
        return False
    if type_ == "column":
        return name == VECTOR_COLUMN
    if type_ == "index":
        return name.endswith(f"_{VECTOR_COLUMN}")
    if type_ == "table":
        return name.endswith(_FTS_SUFFIXES)
    return False


def include_object(
    _object: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic's `include_object` hook: leave the full-text objects out of the comparison."""
    return not (reflected and compare_to is None and is_fulltext_object(name, type_))
