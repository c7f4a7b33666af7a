"""A node as several processes (``--workers N``): one front owns the public HTTP port and
assigns viewers to local worker edges, each with its own media port, pulling each room once
from the front over loopback."""
