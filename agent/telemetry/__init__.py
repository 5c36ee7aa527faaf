"""What the agent reports over MQTT: presence, telemetry and events, via a durable outbox."""
