"""The zoo: registry of models/versions/variants, artifact store, signing key, device profiles.

Kept import-light on purpose: import the submodule you need (e.g. `edgehub.zoo.registry`),
so that `import edgehub.zoo` never pulls in SQLAlchemy or cryptography.
"""
