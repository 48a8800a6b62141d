"""How what the upstream says reaches this process's hub: the relay seam (centrifuge's
`Broker`, encode/broadcaster's backends). `Relay` is the interface; `LocalRelay` runs
the upstream in this process and publishes straight into the hub; `cluster.RedisRelay`
shares one upstream between processes through Redis. `wiring.py` picks one.
"""
