"""Network front doors: each only translates its wire format to and from the core's types."""
