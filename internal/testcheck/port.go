package testcheck

import (
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
)

// FreePort returns a loopback TCP port that was free a moment ago, for a test
// that must give a port to processes it starts (MASTER_PORT). It is drawn
// below Linux's ephemeral range (32768-60999): a port the kernel hands out
// (net.Listen on port 0, or any outgoing connection of a busy machine) may be
// taken again by another process between this check and the rank's own bind,
// while a port outside the range is taken only by someone who asks for it by
// number.
func FreePort(t testing.TB) int {
	t.Helper()
	for try := 0; try < 200; try++ {
		port := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		ln.Close()
		return port
	}
	t.Fatal("no free loopback port in 20000-31999")
	return 0
}
