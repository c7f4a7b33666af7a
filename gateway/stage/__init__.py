"""The room, apart from the WHIP sessions (``gateway.anchors``) and the media work
(``gateway.mixer``): the stage table (``table``), the room's program (``room``: renditions,
reconnect grace, end of stream, webhook events), the director that picks passthrough or the
mixer and keeps the mix-minus feeds (``director``), each anchor's own hub (``anchor_hub``) and
the hub a viewer's query selects (``selection``)."""
