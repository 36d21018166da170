// Package host describes the machine a rank runs on, as the kernel and the
// launcher report it: the memory available, how many ranks share the host, and
// what this process uses. Memory checks read it before anything large is
// loaded, and the rank logs record it every step.
package host

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// AvailableMemory is the host memory the kernel reports as available, in bytes,
// so that a model too large for this machine is refused before allocation
// instead of being killed by the OOM killer halfway. 0 when unknown (no limit).
func AvailableMemory() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemAvailable:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return 0
			}
			return kb * 1024
		}
	}
	return 0
}

// Ranks is how many ranks the launcher started on this host (1 if it does not
// say).
func Ranks() int {
	for _, k := range []string{"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE", "LOCAL_WORLD_SIZE"} {
		var n int
		if _, err := fmt.Sscan(os.Getenv(k), &n); err == nil && n > 0 {
			return n
		}
	}
	return 1
}

// HeapBytes is the Go heap in use: the host memory the process holds on purpose.
func HeapBytes() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// Usage reads this process's resident memory and CPU time from the kernel:
// what the rank logs record every step, so that a rank running out of memory or
// starved of CPU shows in its log.
func Usage() (rssBytes int64, cpuSeconds float64) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		cpuSeconds = float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
	}
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		var size, rss int64
		if _, err := fmt.Sscan(string(b), &size, &rss); err == nil {
			rssBytes = rss * int64(os.Getpagesize())
		}
	}
	return rssBytes, cpuSeconds
}

// Name is the host's name, "?" when the kernel does not say.
func Name() string {
	h, err := os.Hostname()
	if err != nil {
		return "?"
	}
	return h
}

// PeakRSS is the most resident memory this process has held so far (the
// kernel's maxrss), 0 when the kernel does not say.
func PeakRSS() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return int64(ru.Maxrss) * 1024 // kilobytes on Linux
}
