"""Foundations every layer uses: errors, typed options, command settings, input checks, the console, module trust
and timing statistics. Torch-free, so the command line checks its input before any heavy import."""
