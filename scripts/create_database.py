"""Create the database MEMBERFLOW_POSTGRES_URL names if it is missing (`make prod`)."""

from __future__ import annotations

import os
import sys

import psycopg2
from psycopg2 import sql
from sqlalchemy.engine import make_url

url = make_url(os.environ["MEMBERFLOW_POSTGRES_URL"])
server = psycopg2.connect(
    dbname="postgres",
    user=url.username,
    password=url.password or "",
    host=url.host or "127.0.0.1",
    port=url.port or 5432,
)
server.autocommit = True
with server.cursor() as cursor:
    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
    if cursor.fetchone() is None:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
        sys.stdout.write(f"created database {url.database}\n")
server.close()
