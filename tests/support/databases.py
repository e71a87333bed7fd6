"""Databases created by the test run: SQLite files, or databases on the PostgreSQL server.

``DATABASE_URL`` chooses the engine. With a ``postgres://`` URL every
database is created on that server under a random name and dropped at the
end of the run. The URL's own database is never touched.
"""

from __future__ import annotations

import secrets
import shutil
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from .servers import manage, project_env


class TestDatabases:
    __test__ = False  # not a test class

    def __init__(self, base_url: str | None, directory: Path) -> None:
        self.directory = directory
        self.base_url = base_url or ""
        self.kind = "postgresql" if self.base_url.startswith(("postgres://", "postgresql://")) else "sqlite"
        self.prefix = f"rt_test_{secrets.token_hex(4)}"
        self.created: list[str] = []
        self._template: str | None = None

    # --- naming ---------------------------------------------------------

    def _url_for(self, name: str) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.directory / (name + '.sqlite3')}"
        parts = urlsplit(self.base_url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))

    def _admin(self) -> psycopg.Connection:
        parts = urlsplit(self.base_url)
        url = urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))
        return psycopg.connect(url, autocommit=True)

    # --- lifecycle ------------------------------------------------------

    def template(self) -> str:
        """Return the URL of a migrated database that fresh databases are copied from."""
        if self._template is None:
            name = f"{self.prefix}_template"
            if self.kind == "postgresql":
                with self._admin() as admin:
                    admin.execute(f'CREATE DATABASE "{name}"')
                self.created.append(name)
            url = self._url_for(name)
            manage("migrate", "--noinput", "-v0", env=project_env(DATABASE_URL=url))
            self._template = name
        return self._url_for(self._template)

    def create(self, label: str) -> str:
        """Create a migrated, empty database and return its URL."""
        self.template()
        name = f"{self.prefix}_{label}_{secrets.token_hex(3)}"
        if self.kind == "sqlite":
            shutil.copyfile(self.directory / f"{self._template}.sqlite3", self.directory / f"{name}.sqlite3")
        else:
            with self._admin() as admin:
                admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
            self.created.append(name)
        return self._url_for(name)

    def drop_all(self) -> None:
        if self.kind != "postgresql":
            return
        with self._admin() as admin:
            for name in reversed(self.created):
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one SQL statement on a test database and return its rows."""
    if url.startswith("sqlite:///"):
        connection = sqlite3.connect(url[len("sqlite:///"):], timeout=20)
        try:
            rows = connection.execute(sql.replace("%s", "?"), params).fetchall()
            connection.commit()
            return rows
        finally:
            connection.close()
    with psycopg.connect(url.replace("postgres://", "postgresql://", 1), autocommit=True) as connection:
        cursor = connection.execute(sql, params)
        return cursor.fetchall() if cursor.description else []
