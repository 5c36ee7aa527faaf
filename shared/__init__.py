"""Code that both the agent and the control plane need: contracts, formats, the CLI."""
