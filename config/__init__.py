"""Settings from the environment and `.env`, watchlist parsing, logging set-up."""
