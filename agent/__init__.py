"""The EdgeFleet edge agent: serves models locally over the Open Inference Protocol."""

__version__ = "0.1.0"
