"""Thin command-line front end of avret."""
