package slirp

// flowTable keeps the flows of one protocol. Slots are reused after a flow
// ends, so a busy engine stops allocating once it has seen its peak number
// of flows. Each reuse bumps the slot's generation, which epoll events
// carry, so a late event for a closed flow never reaches its successor.
type flowTable[K comparable, F any] struct {
	flows []*F
	gens  []uint32
	used  []bool
	byKey map[K]int32
	free  []int32
	count int
}

func (t *flowTable[K, F]) init() { t.byKey = make(map[K]int32) }

func (t *flowTable[K, F]) lookup(k K) (int32, *F) {
	i, ok := t.byKey[k]
	if !ok {
		return -1, nil
	}
	return i, t.flows[i]
}

// add returns a zeroed flow for k; the caller sets its fields.
func (t *flowTable[K, F]) add(k K) (int32, *F) {
	var i int32
	if n := len(t.free); n > 0 {
		i = t.free[n-1]
		t.free = t.free[:n-1]
		*t.flows[i] = *new(F)
	} else {
		i = int32(len(t.flows))
		t.flows = append(t.flows, new(F))
		t.gens = append(t.gens, 0)
		t.used = append(t.used, false)
	}
	t.gens[i]++
	t.used[i] = true
	t.byKey[k] = i
	t.count++
	return i, t.flows[i]
}

// get returns the live flow at i whose generation is gen, or nil.
func (t *flowTable[K, F]) get(i int32, gen uint32) *F {
	if i < 0 || int(i) >= len(t.flows) || !t.used[i] || t.gens[i]&genMask != gen {
		return nil
	}
	return t.flows[i]
}

func (t *flowTable[K, F]) gen(i int32) uint32 { return t.gens[i] & genMask }

func (t *flowTable[K, F]) remove(i int32, k K) {
	if !t.used[i] {
		return
	}
	t.used[i] = false
	delete(t.byKey, k)
	t.free = append(t.free, i)
	t.count--
}

// each calls fn for every live flow; fn may remove the flow it is given.
func (t *flowTable[K, F]) each(fn func(i int32, f *F)) {
	for i := range t.flows {
		if t.used[i] {
			fn(int32(i), t.flows[i])
		}
	}
}

// genMask keeps the generation within the bits left in epoll user data.
const genMask = 1<<28 - 1
