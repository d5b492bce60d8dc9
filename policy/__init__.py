"""Business rules every decision follows, pure and vectorised, read by batch, API and reports."""
