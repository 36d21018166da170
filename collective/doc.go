// Package collective is how the ranks of a training job talk to each other:
// a Comm interface with the collectives data and pipeline parallelism need
// (AllReduce, AllGather, ReduceScatter, Broadcast, Send/Recv, Barrier, and
// sub-communicators), and a TCP backend that implements it for CPUs and for
// machines without NCCL. A GPU backend implements the same interface.
//
// # The model
//
// One process per rank, started by a launcher (mpirun, srun, or by hand).
// FromEnv reads who this process is from the launcher's environment; Connect
// joins the job and returns the world Comm:
//
//	cfg, err := collective.FromEnv(os.Getenv)
//	world, err := collective.Connect(ctx, cfg)
//	defer world.Close()
//	err = world.AllReduce(collective.F32(grads), collective.Avg)
//
// Every rank listens on one TCP port on one interface (never on all of them).
// Rank 0's port is the rendezvous: each rank registers its address there and
// rank 0 answers with the table of every rank's address. With no MASTER_ADDR
// (mpirun on one host), rank 0 listens on 127.0.0.1 on a free port and writes
// "host:port" to $TMPDIR/train-rendezvous-<hash of the launcher's job id>.addr
// (atomically, by rename); the others poll for the file and retry until they
// reach a rank 0 that proves it belongs to the job, so a stale file from an
// earlier job only delays them. Rank 0 removes the file as soon as every rank
// has registered (or the rendezvous failed): nothing reads it later, and a
// job that is aborted leaves none behind.
//
// # Authentication
//
// Every connection, rendezvous and data alike, starts with an HMAC-SHA256
// challenge and response over fresh nonces from both sides, keyed by the job
// token and covering the world size and both ranks. The token is
// TRAIN_JOB_TOKEN (the sbatch scripts make a random one per job); else, under
// Open MPI, a hash of the job id and mpirun's random per-job key; else a hash
// of the job id and a per-user secret, ~/.config/train/job-secret (mode 0600,
// made on first use; a cluster's nodes share it through the home directory).
// The job id alone is never enough: under Slurm every user sees it in squeue.
// A connection that cannot prove it belongs to this job and world size is
// refused, logged (a few one by one, then a count per minute), and closed;
// the job carries on.
//
// # Collectives on a ring
//
// Each Comm connects its ranks in a ring: rank r dials r+1 and accepts from
// r-1, one persistent connection each way, used in one direction. AllReduce is
// a reduce-scatter followed by an all-gather (2(n-1)/n of the buffer crosses
// each link, the bandwidth optimum); the buffer is cut in n segments and each
// segment in chunks (Config.ChunkBytes), and a chunk is passed on as soon as it
// has arrived and been reduced, so all links are busy at once. Data is read
// straight into the caller's buffer (a reduction reads into one chunk of
// scratch first); nothing is allocated per chunk. Any length works, including
// 0, 1 and lengths that are not multiples of the group size. Each operation
// starts with a 32-byte header (kind, type, count, reduction, root, sequence
// number) that the receiver checks against its own call, so ranks that call
// different collectives fail with an error saying so instead of exchanging
// garbage. Point-to-point Send/Recv use one connection per ordered pair of
// ranks, dialed by the sender on first use. Every link of every Comm is its own
// TCP connection carrying one stream, so operations on different Comms and on
// point-to-point links never wait for each other.
//
// Split and Sub build sub-communicators (pipeline stages, data-parallel
// groups) with their own rings over the same listeners.
//
// # Failure
//
// Each rank keeps a control connection to rank 0 and they exchange heartbeats
// every Timeout/4. A rank that dies closes its sockets and rank 0 notices at
// once; a rank that hangs or becomes unreachable is noticed after Timeout of
// silence. A rank whose data link fails (or that calls Abort) reports it to
// rank 0. Rank 0 decides (the first failure it learns of wins) and sends the
// verdict, a RankError naming the lost rank and its host, to every rank; every
// rank then hangs up its control link and cuts its connections, so every
// pending and later operation of every Comm returns that error. Rank 0 fails
// itself only once the ranks have hung up (or a few seconds passed), so that
// its process exiting cannot reset a connection before the verdict is read.
// If rank 0 itself is lost, every rank sees its control link close and names
// rank 0. Without a verdict within Timeout a rank decides alone. So a failure
// anywhere makes every rank fail within about Timeout, never hang; the job
// should then exit non-zero. A live rank that is merely slow is not a failure
// (its heartbeats keep coming); Config.OpTimeout bounds single operations for
// those who want that too.
//
// Close is collective: after a final barrier the ranks say goodbye over the
// control links, so that an orderly end is not mistaken for a failure.
package collective
