"""Media work of a mixed room: layout, decode, composite, audio mix, encode (the room itself is
gateway.stage)."""
