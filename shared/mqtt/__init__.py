"""MQTT for EdgeFleet: topics, message envelopes, signed commands, a client and brokers.

- `topics`: the topic grammar (`edgefleet/v1/dev/{device_id}/{kind}`,
  `edgefleet/v1/group/{group}/cmd`) and MQTT wildcard matching.
- `envelope`: the versioned JSON envelope every message travels in, and the counters
  receivers keep so that a malformed message is counted and logged, never a crash.
- `commands`: commands signed by an assignment key, with an expiry and a nonce.
- `settings`: what a client connects with (URL, credentials, TLS files, will).
- `client`: a small asyncio adapter over paho-mqtt; paho's error codes become `errors`.
- `broker`: Mosquitto run as a child process, and the embedded amqtt broker of the demo.
- `tail_cli`: `edgefleet mqtt tail`, which prints decoded messages as they arrive.
"""
