"""Alembic migrations of the service's schema.

``env.py`` runs on a connection handed over in ``config.attributes["connection"]`` (what
:func:`persistence.engine.run_migrations` does) or, from the ``alembic`` command line,
on an engine built from ``sqlalchemy.url`` / ``DATABASE_URL``. Revisions live in
``versions/``; the schema is never created any other way.
"""
