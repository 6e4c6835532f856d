"""How the world reaches the engine: the ``cortx-workflow`` CLI and the demo upstream services.

(The Ray Serve HTTP ingress of FDD §3 will live here too.)
"""

__all__: list[str] = []
