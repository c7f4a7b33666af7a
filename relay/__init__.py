"""Encoded-media layer of stagecast: frames, fan-out hub, viewer (WHEP) side, cluster plumbing."""
