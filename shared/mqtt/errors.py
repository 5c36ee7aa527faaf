"""Errors raised by the MQTT layer.

    EdgeFleetError
    └── MqttError                  anything the MQTT layer raises on purpose
        ├── MqttSettingsError      a URL, file or option that cannot work (fix the settings)
        ├── NotConnected           no session with the broker now (retry after reconnection)
        ├── ConnectRefused         the broker answered CONNACK with a failure: bad credentials,
        │                          not authorised, unsupported protocol (fix the settings)
        ├── PublishFailed          paho refused a publish, or the broker's PUBACK is a failure
        ├── SubscribeFailed        the broker's SUBACK refused a subscription
        ├── TopicError             a topic or id outside the grammar of `shared.mqtt.topics`
        ├── EnvelopeError          a message that is not a valid envelope (names the field)
        └── BrokerError            a test or demo broker could not start or stop

Paho reports errors as integer codes and reason codes; `shared.mqtt.client` turns them into
these classes, so no paho type leaks past it. Verifying a signed command raises the
`shared.trust_errors` tree instead, like every other signed document.
"""

from shared.errors import EdgeFleetError


class MqttError(EdgeFleetError):
    """Base class of the MQTT layer's errors."""


class MqttSettingsError(MqttError):
    """The MQTT settings cannot work; the message names the setting at fault."""


class NotConnected(MqttError):
    """The client has no session with the broker right now."""


class ConnectRefused(MqttError):
    """The broker refused the connection (CONNACK reason code), e.g. bad credentials."""


class PublishFailed(MqttError):
    """A publish was refused by paho or failed at the broker (PUBACK reason code)."""


class SubscribeFailed(MqttError):
    """The broker refused a subscription (SUBACK reason code)."""


class TopicError(MqttError):
    """A topic, filter or id does not follow the EdgeFleet topic grammar."""


class EnvelopeError(MqttError):
    """A message is not a valid envelope; `field` names what is at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class BrokerError(MqttError):
    """A broker run by `shared.mqtt.broker` failed to start or stop."""
