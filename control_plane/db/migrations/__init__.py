"""Alembic migration scripts for the control plane's database."""
