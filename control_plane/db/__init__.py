"""The control plane's database: ORM models, engine, sessions and Alembic migrations."""
