"""What a store's schema is, as the database reports it: to compare a migrated store with
one made from ``kser/store/schema.py`` (tests/unit and tests/integration use it)."""

from sqlalchemy import create_engine, inspect

from kser.store import schema
from kser.store.migrations import migrate


def describe(engine) -> dict:
    """Tables → columns (name, type, nullable), primary key, foreign keys, indexes."""
    inspector = inspect(engine)
    described = {}
    for table in sorted(inspector.get_table_names()):
        if not table.startswith("kser_"):
            continue
        described[table] = {
            "columns": sorted((c["name"], type(c["type"]).__name__, c["nullable"])
                              for c in inspector.get_columns(table)),
            "primary key": sorted(inspector.get_pk_constraint(table)["constrained_columns"]),
            "foreign keys": sorted((tuple(f["constrained_columns"]), f["referred_table"],
                                    tuple(f["referred_columns"]),
                                    (f.get("options") or {}).get("ondelete"))
                                   for f in inspector.get_foreign_keys(table)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in inspector.get_indexes(table)),
        }
    return described


def store_at(url: str, version: int):
    """An engine on a new store at schema ``version`` (made by the migrations up to it)."""
    engine = create_engine(url)
    migrate(engine, target=version)
    return engine


def model(url: str):
    """An engine on a new store made straight from schema.py's tables."""
    engine = create_engine(url)
    schema.metadata.create_all(engine)
    return engine
