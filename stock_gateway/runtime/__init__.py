"""Small helpers every part may use: the supervisor of core tasks, cancellation,
the token bucket, logging and redaction. Nothing here imports the rest of the gateway.
"""
