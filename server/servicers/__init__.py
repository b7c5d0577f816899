"""One servicer per kassa.v1 service."""
