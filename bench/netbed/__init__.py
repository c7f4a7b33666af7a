"""The impaired-network test bed: anchors and viewers in their own network namespaces, joined to
the gateway's namespace through a user-space impairment router (loss, delay, jitter, reordering,
Gilbert-Elliott burst loss) with tbf for bandwidth. Used by tests/live/test_netbed.py and
``python -m bench.netbed_run``.

Sans-I/O parts: ``impairment`` (the per-packet model), ``profiles`` (the named link profiles),
``playback`` (freezes, glass-to-glass, rates of one viewer). I/O: ``netns`` (namespaces),
``forwarder`` (the router process), ``bed`` (builds and tears down a bed), ``peer`` (the anchor
and viewer processes run inside the namespaces).
"""
