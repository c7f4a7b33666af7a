"""Process health: event-loop lag, GC pauses."""
