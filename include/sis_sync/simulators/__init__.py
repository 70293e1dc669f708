"""Local stand-ins for the SIS APIs, for the demo and the tests.

Each simulator is a plain-Python HTTP server on 127.0.0.1 speaking one SIS API closely enough
for the project's clients to be tested over real HTTP, with fault injection (errors, rate
limits) and mutations. ``clever`` serves Clever's Data API and Events API v3.0.

Nothing is imported here, so importing one simulator never pulls in another.
"""
