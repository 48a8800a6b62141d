"""Who may do what: admission of a request, signed tokens and entitlements, the
upstream's capacity and fair shares. Every limit the app enforces lives here (the ones
below the app live in `server`).
"""
