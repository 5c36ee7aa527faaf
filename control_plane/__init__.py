"""The EdgeFleet control plane (registry, rollouts, fleet state). Arrives with a later issue."""
