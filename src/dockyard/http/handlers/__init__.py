"""The ``/v2/`` handlers, one module per resource, each a small class bound once.

Every handler takes the request and the route's path parameters, asks the authorizer for
the scope it needs (``Resource.authorize``), makes one core call and renders the answer.
Core errors propagate to the ASGI app, which answers them through ``http/errors.py``.
"""
