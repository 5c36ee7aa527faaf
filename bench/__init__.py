"""Benchmark scripts: each prints a table of ratios against baselines measured in the same run.

`python -m bench.serving` loads the agent with wrk and compares it with a trivial aiohttp
endpoint and with onnxruntime called in-process; results go to `docs/benchmarks.md`.
"""
