"""catdog-agent: camera frames -> TF Serving REST -> cat/dog results over MQTT."""

__version__ = "0.1.0"
