"""Dev-only local stack for callcancel: embedded AWS, provider simulator, event-source runner."""
