"""Seldon Core 1.x's language wrapper: the user class (component.py) and its microservice protocol's semantics
(protocol.py: SeldonMessage in, SeldonMessage out), served as a model of the core by backends/seldon.py."""
