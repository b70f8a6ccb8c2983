"""The Python face of proto/: conversions between memsvc.v1 messages and memsvc.core values."""
