"""The web console: server-rendered pages (Jinja2, autoescaped) over the same LocalHub as the API."""
