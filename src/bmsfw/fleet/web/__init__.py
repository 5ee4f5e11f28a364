"""The fleet operator's web dashboard (docs/fleet.md, "Dashboard")."""

from bmsfw.fleet.web.app import PREFIX, create_dashboard

__all__ = ["PREFIX", "create_dashboard"]
