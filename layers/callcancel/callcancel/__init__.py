"""callcancel: cancel pending outbound calls at telephony providers, reliably, from AWS."""

__version__ = "0.1.0"
