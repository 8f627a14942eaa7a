"""Real time: chat rooms and notifications over WebSockets and SSE, fanned out by the hub."""
