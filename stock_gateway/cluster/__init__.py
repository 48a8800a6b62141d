"""Scale-out over Redis: leadership, interest, relay of encoded frames, the shared
REST budget and quote cache, bars on a cluster. The only package that imports `redis`.
"""
