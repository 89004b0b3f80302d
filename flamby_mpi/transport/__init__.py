"""How messages travel between ranks, and the one FedML boundary: `fedml_bridge` (FedMLTransport,
FedML's args, the aggregator and trainer adapters) with `fedml_imports` (what of FedML 0.9.6 a rank
imports) are the only modules that touch FedML; `wire` moves a message as a pickled skeleton plus
raw tensor buffers; `inprocess` runs every rank in one process without MPI or FedML; `watchdog`
puts a deadline on every wait inside FedML's loop. May import `launch`, `outputs`, `runtime`,
`storage`, `exit` and lower floors; never the roles (it carries their messages, unread).
"""
