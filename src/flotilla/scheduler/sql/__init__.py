"""The scheduler's SQL persistence: ``SqlStore``, its migrations and the leader lock.

SQLAlchemy is imported only inside this package.
"""

from flotilla.scheduler.sql.advisory import AdvisoryLock
from flotilla.scheduler.sql.engine import DEFAULT_URL, parse_url, sqlite_path
from flotilla.scheduler.sql.error import DatabaseError, DatabaseUnavailableError, StoreClosedError
from flotilla.scheduler.sql.migration import (
    current_revision,
    generate_revision,
    head_revision,
    upgrade_to_head,
)
from flotilla.scheduler.sql.store import SqlStore, StoreState

__all__ = [
    "DEFAULT_URL",
    "AdvisoryLock",
    "DatabaseError",
    "DatabaseUnavailableError",
    "SqlStore",
    "StoreClosedError",
    "StoreState",
    "current_revision",
    "generate_revision",
    "head_revision",
    "parse_url",
    "sqlite_path",
    "upgrade_to_head",
]
