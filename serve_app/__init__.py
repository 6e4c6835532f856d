"""How the world reaches the engine: the ``cortx-workflow`` CLI, the HTTP API and the demo services.

* ``cli`` — the ``cortx-workflow`` command (``serve`` runs the HTTP API on Ray Serve).
* ``api`` — the FastAPI app of FDD §3 (:func:`serve_app.api.create_app`), with ``schemas``,
  ``packs`` (deployment, version resolution), ``backend`` (store and ExecutionHosts),
  ``auth`` (bearer keys, scopes, API settings), ``errors`` and ``problems`` (RFC 9457).
* ``deployment`` — the app as a Ray Serve deployment; ``serve-config.yaml`` for ``serve deploy``.
* ``demo_services`` — deterministic stand-ins for the upstream CORTX services.

See docs/api.md for the endpoints.
"""

__all__: list[str] = []
