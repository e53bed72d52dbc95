"""The demo and what it is made of: a private Redis (``embedded``), the cold
inference server, the fleet of worker processes, the soak, the plots, and
the discrete-event simulator of the loop. Imported only by the commands,
tests and benchmarks that need it; the library never imports it."""
