"""`edgehub hub serve`: the service that runs broker, artifact server and fleet workers, its
settings, enrolment and device credentials, TLS certificates, and the demo.
"""
