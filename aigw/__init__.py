"""aigw: an AI gateway data plane for Azure OpenAI.

Data flow, one module per step::

    socket -> aigw.server (aiohttp, one catch-all route)
           -> aigw.gateway (reads the current RouteTable once)
           -> aigw.routing (trie match on the normalised path)
           -> the route's compiled chain (aigw.chain: request id, access log,
              errors, credentials, body checks)
           -> aigw.upstream.relay (forward to Azure, relay JSON or SSE)
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
