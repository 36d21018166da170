package model

import "train/ops"

// MemoryPart is one part of the device memory a model holds.
type MemoryPart struct {
	Name  string
	Bytes int64
}

// Memory lists the device memory the model holds, by part: the weights (in
// mixed precision the bf16 copies and the float32 masters of trainable
// tensors apart), the gradients, the activations of the current batch shape
// (after Plan or a Forward) and the rope tables.
func (m *Model) Memory() []MemoryPart {
	var parts []MemoryPart
	add := func(name string, bufs ...ops.Buf) {
		var n int64
		for _, b := range bufs {
			n += ops.Bytes(b)
		}
		if n > 0 {
			parts = append(parts, MemoryPart{name, n})
		}
	}
	if m.compute == ops.F32 {
		add("weights (f32)", m.paramBuf)
	} else {
		add("weights ("+m.compute.String()+")", m.workBuf)
		add("trainable f32 masters", m.paramBuf)
	}
	add("gradients (f32)", m.gradBuf)
	var acts []ops.Buf
	for _, p := range m.slots {
		if p != nil {
			acts = append(acts, p.fbuf, p.sbuf, p.ibuf)
		}
	}
	add("activations", acts...)
	add("rope tables", m.ropeBuf)
	return parts
}

// GradBuffer is the one allocation holding every gradient of the stage (F32),
// for reducing them all in one collective on the device.
func (m *Model) GradBuffer() ops.Buf { return m.gradBuf }
