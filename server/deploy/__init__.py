"""Scale-out: the unmask server as a Ray Serve deployment (``ray_serve``), ``unmask serve --replicas``
(``launch``), the engine metrics exported through Ray's metrics (``ray_metrics``) and the proxy-side
OpenAI error shape (``proxy``). Needs the ``[ray]`` extra; nothing else in unmask imports this package."""
