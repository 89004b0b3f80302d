"""What a rank's process does for itself, apart from the federation: start-up marks from the
OS start of the process, gathered for results.json (`startup`), GPU placement by local rank or a
mapping file (`devices`), whether the job's ranks fit their hosts' and GPUs' memory
(`memory_fit`), torch.optim without importing torch._dynamo (`optim_without_dynamo`), torch without
running its meta-device kernels until something may use them (`torch_without_meta_kernels`), the
garbage collector held off while a rank imports (`import_gc`), and DataLoader
workers started from a fork server, never forked from the MPI rank, a dead one named (`loader_workers`).
May import `exit`, `storage`, `config`, `registry` and the package's face; nothing that knows a
round, a role or FedML.
"""
