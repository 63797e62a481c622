"""The ground floor: value types and time helpers every layer shares. Imports nothing of ours."""
