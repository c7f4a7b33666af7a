"""Co-hosting: several anchors mixed into one program (layout, audio mix, composite, encode)."""
