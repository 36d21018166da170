// Package selftest holds the pre-flight checks of `train selftest`, run the
// way a job will run (under mpirun, srun or by hand) before a long run:
//
//   - Collective checks the network: every collective of the TCP backend
//     across the world, compared with a serial computation.
//   - GPU checks each rank's GPU and its libraries (kernels and a GEMM against
//     the host), NCCL across every rank's GPU, and the room on the run
//     directory's file system.
//
// Every rank takes part; any failure on any rank makes every rank's check
// fail, so that a launcher sees a non-zero exit wherever something is wrong.
// The options are plain values, already checked by the command line; what the
// checks print is the command's output.
package selftest
