"""The chaos suite: faults, overload and hostile input against real processes, with figures.

`python -m bench.chaos` (or `make chaos`) runs every scenario of `scenarios.SCENARIOS` in turn.
Each one starts what it needs (agent, broker, control plane, database) on 127.0.0.1, injects
its fault a bounded number of times within a bounded time, and returns an `Outcome`: what it
did and a table of figures, each with its target and verdict. `report` turns the outcomes into
`docs/reliability.md`. `--quick` is the short setting that `make test` runs
(tests/chaos), with the same code and smaller counts and durations.

Modules:
- the frame: `outcome` (options, figures, outcomes), `report` (the Markdown page), `scenarios`
  (the registry), `__main__` (the command line);
- one module per scenario: `crash_update`, `disk_full`, `broker_outage`, `cp_restart`,
  `overload`, `soak`, `hostile_clients`, `fuzz` (which runs tests/fuzz at a larger budget);
- their parts: `device`, `kit`, `slow_server`, `state_check`, `tmpfs` (an agent under update
  and what it leaves on disk); `witness`, `outbox_probe`, `traffic`, `outage_figures` (the
  broker outage); `cp_world`, `cp_rollouts`, `cp_store`, `sim_process` (a control plane, its
  database and a simulated fleet); `served_agent`, `capacity`, `http_load`, `resource_log`,
  `attacks`, `soak_figures`, `hostile_figures` (load, attacks, and the agent's resources).
"""
