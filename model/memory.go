package model

import "train/ops"

// MemoryPart is one part of the device memory a model holds.
type MemoryPart struct {
	Name  string
	Bytes int64
	Host  bool // in host memory (offloaded activations), not on the device
}

// Memory lists the device memory the model holds, by part: the weights (in
// mixed precision the bf16 copies and the float32 masters of trainable
// tensors apart), the gradients, the activations of the current batch shape
// (after Plan or a Forward) and the rope tables. With QLoRA the 4-bit
// weights' codes, their scales and the workspace they are dequantized into
// are parts of their own.
func (m *Model) Memory() []MemoryPart {
	var parts []MemoryPart
	add := func(name string, bufs ...ops.Buf) {
		var n int64
		for _, b := range bufs {
			n += ops.Bytes(b)
		}
		if n > 0 {
			parts = append(parts, MemoryPart{Name: name, Bytes: n})
		}
	}
	// The 4-bit weights' codes and scales; the F32 scales sit in paramBuf.
	var codes, scaleCodes, f32Scales int64
	for _, p := range m.params {
		if q := p.NF4; q != nil {
			codes += ops.Bytes(q.Packed)
			scaleCodes += ops.Bytes(q.Codes)
			f32Scales += ops.Bytes(q.Absmax) + ops.Bytes(q.Absmax2) + ops.Bytes(q.Map)
		}
	}
	if codes > 0 {
		parts = append(parts, MemoryPart{Name: "4-bit NF4 weights", Bytes: codes}, MemoryPart{Name: "NF4 scales", Bytes: scaleCodes + f32Scales})
	}
	if m.compute == ops.F32 {
		parts = append(parts, MemoryPart{Name: "weights (f32)", Bytes: ops.Bytes(m.paramBuf) - f32Scales})
	} else {
		add("weights ("+m.compute.String()+")", m.workBuf)
		parts = append(parts, MemoryPart{Name: "trainable f32 masters", Bytes: ops.Bytes(m.paramBuf) - f32Scales})
	}
	add("NF4 dequantization workspace ("+m.compute.String()+")", m.deq)
	add("gradients (f32)", m.gradBuf)
	var acts []ops.Buf
	for _, p := range m.slots {
		if p != nil {
			acts = append(acts, p.fbuf, p.sbuf, p.ibuf)
		}
	}
	add("activations", acts...)
	add("rope tables", m.ropeBuf)
	var host int64
	for _, p := range m.slots {
		if p != nil {
			host += ops.Bytes(p.host)
		}
	}
	if host > 0 {
		parts = append(parts, MemoryPart{Name: "offloaded layer inputs", Bytes: host, Host: true})
	}
	return parts
}

// GradBuffer is the one allocation holding every gradient of the stage (F32),
// for reducing them all in one collective on the device.
func (m *Model) GradBuffer() ops.Buf { return m.gradBuf }
