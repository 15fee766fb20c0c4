"""Local emulators of the vendor APIs (FlexPOS, Heyloyalty, Ticketmaster) with generated data.

Written from `shared/apis/*.md` only, never from the project's clients, so the end-to-end tests
catch a client that misreads the contract. Start one with `sandbox.server.SandboxServer`.
"""
