"""The two roles of a run and the round protocol between them: `protocol` (GlobalMessage from the
server, ClientReply from a client), `server` (ServerRun on rank 0: the global model, the strategy's
aggregation, history and the checkpoint manifest), `client` (ClientRun on ranks 1..N: one FLamby
centre's data, learner and strategy half) and `training` (FLamby's local training and evaluation
semantics). Free of FedML and MPI: a transport carries the messages. May import the plan,
`checkpoints`, `strategies`, `outputs`, `runtime`, `exit` and lower floors; not `transport`.
"""
