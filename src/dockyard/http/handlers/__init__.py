"""The ``/v2/`` handlers, one module per resource, each a small class bound once.

Every handler takes the request and the route's path parameters (the router has
authorized the scope the route table names: ``Resource.authorize``), makes one core call
and renders the answer.
Core errors propagate to the ASGI app, which answers them through ``http/errors.py``.
"""
