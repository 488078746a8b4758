// Package logfile keeps a log file under a size bound, as passt does with
// --log-file and --log-size: when a write would pass the bound, the oldest
// lines are dropped, so the file always holds the most recent history and
// never grows past the bound.
package logfile

import (
	"bytes"
	"fmt"
	"os"
	"sync"
)

// DefaultSize is passt's default --log-size.
const DefaultSize = 1 << 20

// File is a size-bounded log file. It is safe for concurrent use.
type File struct {
	mu     sync.Mutex
	f      *os.File
	size   int64
	max    int64
	header []byte
}

// Open creates or truncates path. header, if not empty, is written as the
// first line and kept when old lines are dropped, so the file always says
// what wrote it.
func Open(path string, max int64, header string) (*File, error) {
	if max < 1024 {
		return nil, sizeError(max)
	}
	f, err := OpenFile(path)
	if err != nil {
		return nil, err
	}
	return New(f, max, header)
}

// OpenFile creates or truncates path for New, which may run in another
// process: the sandboxed daemon gets the descriptor. A new file is its
// owner's alone (0600), as passt's: a log can name the guest's peers.
func OpenFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
}

func sizeError(max int64) error {
	return fmt.Errorf("log size %d is too small (at least 1024 bytes)", max)
}

// New keeps the empty file f as Open does.
func New(f *os.File, max int64, header string) (*File, error) {
	if max < 1024 {
		f.Close()
		return nil, sizeError(max)
	}
	l := &File{f: f, max: max}
	if header != "" {
		l.header = []byte(header + "\n")
		if _, err := l.Write(l.header); err != nil {
			f.Close()
			return nil, err
		}
	}
	return l, nil
}

// Write appends p, first dropping the oldest lines if p would not fit.
// A single write larger than the bound keeps only its tail.
func (l *File) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	room := l.max - int64(len(l.header))
	if int64(len(p)) > room {
		p = p[int64(len(p))-room:]
	}
	if l.size+int64(len(p)) > l.max {
		if err := l.dropOldest(int64(len(p))); err != nil {
			return 0, err
		}
	}
	if _, err := l.f.WriteAt(p, l.size); err != nil {
		return 0, err
	}
	l.size += int64(len(p))
	return n, nil
}

// dropOldest moves the newest lines to just after the header, leaving
// room for need bytes plus a quarter of the bound, so that rewrites are
// rare. It moves them a piece at a time, as passt's log.c does, so that
// a large bound costs no memory.
func (l *File) dropOldest(need int64) error {
	start := int64(len(l.header))
	keep := max(l.max-start-need-l.max/4, 0)
	from := start // the first byte kept
	buf := make([]byte, moveChunk)
	if cut := l.size - start - keep; cut > 0 {
		// Keep whole lines: from the first after the cut.
		for from = start + cut; from < l.size; {
			n, err := l.f.ReadAt(buf[:min(moveChunk, l.size-from)], from)
			if err != nil {
				return err
			}
			if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
				from += int64(i) + 1
				break
			}
			from += int64(n)
		}
	}
	to := start
	for from < l.size {
		n, err := l.f.ReadAt(buf[:min(moveChunk, l.size-from)], from)
		if err != nil {
			return err
		}
		if _, err := l.f.WriteAt(buf[:n], to); err != nil {
			return err
		}
		from += int64(n)
		to += int64(n)
	}
	l.size = to
	return l.f.Truncate(l.size)
}

// moveChunk is how much of the log dropOldest moves at a time.
const moveChunk = 64 << 10

// Close closes the file.
func (l *File) Close() error { return l.f.Close() }
