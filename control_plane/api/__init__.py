"""The control plane's REST API (`/api/v1/...`), served by aiohttp."""
