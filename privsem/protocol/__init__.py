"""Protocol: typed messages, the round's stage machine, and transport-free client and server."""
