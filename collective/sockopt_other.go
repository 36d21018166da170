//go:build !linux

package collective

import (
	"net"
	"time"
)

// tuneConn sets keepalive probes so that an idle link to a vanished peer
// fails within about timeout.
func tuneConn(c *net.TCPConn, timeout time.Duration) {
	c.SetNoDelay(true)
	c.SetKeepAliveConfig(net.KeepAliveConfig{
		Enable: true, Idle: max(timeout/2, time.Second), Interval: max(timeout/8, time.Second), Count: 4,
	})
}
