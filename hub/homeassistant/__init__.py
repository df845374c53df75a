"""Roost in Home Assistant, laid out like an HA integration (``docs/home-assistant.md``).

The hub is one MQTT-discovered device, "Roost hub", with its entities:

* :mod:`~hub.homeassistant.topics`: the discovery, command and state topic names;
* :mod:`~hub.homeassistant.settings`: what the homeowner changes from Home Assistant
  (learning mode, thresholds, the "what was it?" choices), persisted across restarts;
* :mod:`~hub.homeassistant.entities`: the discovery components (entity definitions)
  and the device config;
* :mod:`~hub.homeassistant.bridge`: MQTT <-> hub: the device config and states out
  (latest per topic, bounded, across broker outages), validated commands in;
* :mod:`~hub.homeassistant.coordinator`: the pollers that fetch status from the
  inference, update and personalization services and push it to the entities, and the
  service calls behind the entities' buttons;
* :mod:`~hub.homeassistant.metrics`: the Prometheus metrics of the above;
* :mod:`~hub.homeassistant.client`: Home Assistant's REST/websocket API (actions,
  registries, history import);
* :mod:`~hub.homeassistant.mapping`: which Home Assistant entity feeds which model
  input, proposed from HA's registries.
"""
