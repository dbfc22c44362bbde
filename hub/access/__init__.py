"""Who may use the hub's API and console: hashed API tokens with roles, and the audit log."""
