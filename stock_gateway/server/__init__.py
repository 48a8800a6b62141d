"""Everything that touches uvicorn's internals: our HTTP and WebSocket protocol
classes, the fast path, and the limits below the app. Pinned in setup.cfg and guarded
by tests/server/test_server_protocol.py.
"""
