"""The aiortc seam: the adapter (the only module touching aiortc internals), the direct sender and
its SRTP writer, ingest, peers, SDP, viewers.
"""
