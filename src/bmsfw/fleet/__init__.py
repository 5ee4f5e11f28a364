"""Fleet OTA: the update server (HTTP API, campaigns, inventory) and its agent client.

Server: :func:`bmsfw.fleet.app.create_app` (FastAPI) over
:class:`bmsfw.fleet.service.FleetService`; ``bmsfw fleet serve`` runs it under
uvicorn. Agent side: :class:`bmsfw.fleet.client.FleetClient` speaks the protocol
in :mod:`bmsfw.fleet.protocol`. docs/fleet.md is the operator's guide.

Importing this package does not import FastAPI or SQLAlchemy; the submodules do.
"""

__all__: list[str] = []
