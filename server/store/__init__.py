"""SQL, one module per aggregate. Functions take a connection (or pool) and plain values."""
