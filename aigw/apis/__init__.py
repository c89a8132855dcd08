"""The Azure OpenAI APIs aigw speaks, and routing by the model a request names.

* `aigw.apis.operations`: the catalogue of operations (one per Kong ``route_type``),
  the paths the SDK builds for each, in both API styles, and how each is read.
* `aigw.apis.dispatch`: the trie entries of the model-in-body paths
  (``/openai/v1/chat/completions``, ``/openai/responses``...), which read the body once,
  find the route that serves its ``model`` and hand the request to that route's chain.
"""
