"""Publishing a model: recipe planning, the build pipeline (passes per profile), evaluation of
every variant in a sandboxed child, and registration in the zoo.
"""
