"""Everything that touches the OS: TUN, sockets, routes, the event loop."""
