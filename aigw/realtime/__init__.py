"""The Realtime API: a WebSocket relayed between the client and Azure, frame by frame."""
