"""The room: its table entry (``table``), its program (``room``: director, renditions, mix-minus,
reconnect grace, end of stream) and the hubs a viewer can pick (``selection``)."""
