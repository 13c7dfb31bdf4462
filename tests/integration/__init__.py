"""Integration tests in network namespaces (need root); see netns.py for the helpers."""
