"""Local emulators of the vendor APIs with generated data: every module here that defines an
`EMULATOR` (FlexPOS, Heyloyalty, Ticketmaster, Teyca, Axle-CRM, ...).

Written from each vendor's published API and memberflow's labelled assumptions (FP-A*, TM-A*,
HL-A*, TY-A*, AX-A*; see the README), never from the project's clients, so the end-to-end
tests catch a client that misreads the contract. Start one with `sandbox.server.SandboxServer`;
vendor modules are discovered (`sandbox.emulator`, `sandbox.app.discovered_emulators`), not
listed.
"""
