"""privsem's Flower apps for a deployment: the ServerApp runs the server's side of every round
(privsem.runtime.flower.deploy.server_main); the ClientApp relays each message to its node's
party host (privsem.runtime.flower.apps.make_client_app)."""

from privsem.runtime.flower.apps import make_client_app, make_server_app
from privsem.runtime.flower.deploy import server_main

server = make_server_app(server_main)
client = make_client_app()
