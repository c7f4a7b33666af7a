"""Room messages: chat, likes and custom commands over a per-room real-time channel."""
