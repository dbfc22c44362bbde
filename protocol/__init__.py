"""The wire protocol, the only contract between hub and agent: topics, message bodies and their
parsing, signed manifests, tensor specs, variant formats and package layouts. Imports no other
edgehub part (pydantic and cryptography only), so every side may import it.
"""
