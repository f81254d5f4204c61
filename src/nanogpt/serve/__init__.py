"""``nanogpt serve``: an OpenAI-compatible completion server and a browser playground.

The pieces, bottom to top:

* :mod:`nanogpt.serve.engine` -- the batched decoding engine: one thread owns the model, takes
  requests from a bounded queue, prefills each alone and decodes all active requests together,
  one token each per step, every request at its own position with its own seed and sampling
  settings (so a request's tokens are the ones it would get served alone);
* :mod:`nanogpt.serve.views` -- the JSON behind the explainer views: tokens, shape table,
  attention, logit lens, the next-token distribution, training curves;
* :mod:`nanogpt.serve.api` -- the FastAPI app: ``/v1/models``, ``/v1/completions`` (plain and
  server-sent events), ``/health``, the ``/api/*`` view endpoints and the static page;
* :mod:`nanogpt.serve.command` -- the ``nanogpt serve SOURCE`` entry point (uvicorn).

FastAPI and uvicorn are the optional extra ``serve`` (``pip install 'nanogpt[serve]'``); only
the app and the command import them.
"""
