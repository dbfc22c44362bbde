"""The fleet domain: device records, desired states, aliases, rollouts, events and reports, and the
views `fleet status` reads, stored next to the zoo's tables (SQLite or PostgreSQL).
"""
