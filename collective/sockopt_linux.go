package collective

import (
	"net"
	"syscall"
	"time"
)

// tcpUserTimeout is TCP_USER_TIMEOUT from linux/tcp.h (not in package syscall).
const tcpUserTimeout = 0x12

// tuneConn sets how a data connection notices a vanished peer: keepalive
// probes while idle, and TCP_USER_TIMEOUT while data is unacknowledged, both
// within about timeout.
func tuneConn(c *net.TCPConn, timeout time.Duration) {
	c.SetNoDelay(true)
	c.SetKeepAliveConfig(net.KeepAliveConfig{
		Enable: true, Idle: max(timeout/2, time.Second), Interval: max(timeout/8, time.Second), Count: 4,
	})
	if rc, err := c.SyscallConn(); err == nil {
		ms := int(max(timeout, time.Second) / time.Millisecond)
		rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, ms)
		})
	}
}
