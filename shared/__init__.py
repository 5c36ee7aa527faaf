"""Code that the agent and the control plane both depend on: contracts, formats, the command line."""
