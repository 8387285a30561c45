"""Free TCP ports for the servers the tests start."""

import random
import socket

# Below Linux's ephemeral range (32768 and up), where the many Ray processes of a session take
# their ports: a port found free here is still free when the server binds it, where one the
# kernel hands out (bind to port 0) can be taken by a Ray process in between.
PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """A port free on every interface, below the ephemeral range."""
    while True:
        port = random.randrange(*PORT_RANGE)
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
