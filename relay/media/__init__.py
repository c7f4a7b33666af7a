"""Sans-I/O media core: frames, reassembly, the fan-out hub, viewer queues, keyframes. Imports
neither aiortc nor fastapi.
"""
