"""Runtime adapters behind one backend contract (see `agent.runtimes.base`).

Runtime packages are optional and imported lazily by each adapter, so a device without
OpenVINO or LiteRT still runs everything else. Nothing here imports aiohttp.
"""
