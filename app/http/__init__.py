"""The HTTP edge: what every answer carries, who may read it cross-origin, how often a client
may ask, and how long a connection may take to say what it wants."""
