"""Getting frames to one client: its outbox (direct write, bounded queue,
conflation, eviction), paced delivery (throttle and batch) and quotes on subscribe.
"""
