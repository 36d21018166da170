package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// netnsPair makes two network namespaces joined by a veth pair, each end with an
// address of 10.231.N.0/24, and removes them when the test ends. It skips the
// test, saying why, where namespaces cannot be made (not root, no iproute2).
func netnsPair(t *testing.T) (ns [2]string, addr [2]string, link [2]string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root: run the tests as root to include the partition test")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip command (iproute2): cannot make network namespaces")
	}
	id := os.Getpid() % 200
	tag := fmt.Sprintf("trn%d", os.Getpid())
	ns = [2]string{tag + "a", tag + "b"}
	link = [2]string{fmt.Sprintf("vt%da", id), fmt.Sprintf("vt%db", id)}
	addr = [2]string{fmt.Sprintf("10.231.%d.1", id), fmt.Sprintf("10.231.%d.2", id)}
	run := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	t.Cleanup(func() {
		for _, n := range ns {
			exec.Command("ip", "netns", "del", n).Run()
		}
	})
	if err := run("netns", "add", ns[0]); err != nil {
		t.Skipf("cannot make a network namespace here: %v", err)
	}
	steps := [][]string{
		{"netns", "add", ns[1]},
		{"link", "add", link[0], "type", "veth", "peer", "name", link[1]},
		{"link", "set", link[0], "netns", ns[0]},
		{"link", "set", link[1], "netns", ns[1]},
	}
	for i := 0; i < 2; i++ {
		steps = append(steps,
			[]string{"-n", ns[i], "addr", "add", addr[i] + "/24", "dev", link[i]},
			[]string{"-n", ns[i], "link", "set", link[i], "up"},
			[]string{"-n", ns[i], "link", "set", "lo", "up"})
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			t.Skipf("cannot set up the namespaces: %v", err)
		}
	}
	return ns, addr, link
}

// TestFaultNetworkPartition runs two ranks on two "hosts" (network namespaces
// joined by a veth pair), then takes the link down mid-run: both ranks must exit
// non-zero within the timeout, each naming the peer it lost, and neither may hang.
func TestFaultNetworkPartition(t *testing.T) {
	ns, addr, link := netnsPair(t)
	run := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := faultArgs(run)
	args = append(args[:1], append([]string{"100000"}, args[2:]...)...) // run until cut off
	job := fmt.Sprintf("partition-%d", os.Getpid())
	var procs [2]*faultProc
	for r := 0; r < 2; r++ {
		procs[r] = startTrain(t, ctx, []string{"ip", "netns", "exec", ns[r]}, args,
			fmt.Sprintf("RANK=%d", r), "WORLD_SIZE=2", "MASTER_ADDR="+addr[0], "MASTER_PORT=29517",
			"TRAIN_IFACE="+addr[r], "TRAIN_JOB_ID="+job, fmt.Sprintf("TRAIN_COMM_TIMEOUT=%s", faultTimeout))
	}
	if !pollUntil(30*time.Second, nil, func() bool { return maxStep(run) >= 3 }) {
		t.Fatalf("the two ranks never trained 3 steps:\nrank 0:\n%s\nrank 1:\n%s", tail(procs[0].output(), 20), tail(procs[1].output(), 20))
	}
	cut := time.Now()
	if out, err := exec.Command("ip", "-n", ns[0], "link", "set", link[0], "down").CombinedOutput(); err != nil {
		t.Fatalf("taking the link down: %v: %s", err, out)
	}
	deadline := cut.Add(faultTimeout + exitSlack)
	if !waitAll(procs[:], deadline) {
		t.Fatalf("a rank still runs %v after the link went down (timeout %v)", time.Since(cut).Round(time.Millisecond), faultTimeout)
	}
	for r, p := range procs {
		peer := 1 - r
		out := p.output()
		if p.exitCode() == 0 {
			t.Errorf("rank %d exited 0 after the partition:\n%s", r, tail(out, 10))
		}
		if !strings.Contains(out, fmt.Sprintf("rank %d (", peer)) || !strings.Contains(out, addr[peer]) {
			t.Errorf("rank %d's error does not name rank %d at %s:\n%s", r, peer, addr[peer], tail(out, 400))
		}
	}
	faultScore{class: "network partition (veth link down, 2 namespaces)", trials: 1, survived: 1,
		note: fmt.Sprintf("both ranks exited non-zero naming the other within %v of the cut (timeout %v)",
			time.Since(cut).Round(100*time.Millisecond), faultTimeout)}.log(t)
}
