"""The operator dashboard, served by the control plane at `/` (see docs/dashboard.md).

Server-rendered pages (Jinja2) over the same service functions as the API, a session cookie
signed in with an operator token, CSRF on every form, the API's minimum role on every form that
changes something, and live parts of pages fed by one server-sent-events poller per process.
"""

from control_plane.dashboard.app import setup_dashboard

__all__ = ["setup_dashboard"]
