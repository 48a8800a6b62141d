"""What a request reaches: the `/ws` session, Server-Sent Events, the HTTP API,
metrics and the `/docs` page. Endpoints call into the hub and the access layer;
nothing below imports them.
"""
