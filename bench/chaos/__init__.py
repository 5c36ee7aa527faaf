"""The chaos suite: faults, overload and hostile input against real processes, with figures.

`python -m bench.chaos` (or `make chaos`) runs every scenario of `scenarios.SCENARIOS` in turn.
Each one starts what it needs (agent, broker, control plane, database) on 127.0.0.1, injects
its fault a bounded number of times within a bounded time, and returns an `Outcome`: what it
did and a table of figures, each with its target and verdict. `report` turns the outcomes into
`docs/reliability.md`. `--quick` is the short setting that `make test` runs
(tests/chaos), with the same code and smaller counts and durations.

Modules: `outcome` (options, figures, outcomes), `report` (the Markdown page), `scenarios`
(the registry), `__main__` (the command line), and one module per scenario.
"""
