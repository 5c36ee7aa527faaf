"""The agent's HTTP front end: Open Inference Protocol REST routes and Prometheus metrics."""
