package tests

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A minimal guest for QEMU: the host's Debian kernel plus an initramfs
// with busybox, the virtio network modules and an /init script. The cpio
// ("newc") archive is written here, so no packaging tool is needed.

// debianKernel returns the newest installed kernel image and its version.
func debianKernel() (image, version string, err error) {
	imgs, _ := filepath.Glob("/boot/vmlinuz-*")
	for _, img := range imgs {
		v := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", v, "modules.dep")); err == nil {
			image, version = img, v
		}
	}
	if image == "" {
		return "", "", fmt.Errorf("no kernel in /boot with modules (Debian package linux-image-amd64)")
	}
	return image, version, nil
}

// moduleClosure lists the module files to load, dependencies first.
func moduleClosure(kver string, names ...string) ([]string, error) {
	dir := filepath.Join("/lib/modules", kver)
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	deps := map[string][]string{}
	byName := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		mod, rest, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		byName[strings.TrimSuffix(filepath.Base(mod), ".ko")] = mod
	}
	var order []string
	var visit func(m string)
	visit = func(m string) {
		if slices.Contains(order, m) {
			return
		}
		d := deps[m]
		for i := len(d) - 1; i >= 0; i-- {
			visit(d[i])
		}
		order = append(order, m)
	}
	for _, n := range names {
		m, ok := byName[n]
		if !ok {
			// Built into the kernel: nothing to load.
			continue
		}
		visit(m)
	}
	for i, m := range order {
		order[i] = filepath.Join(dir, m)
	}
	return order, nil
}

// cpioWriter writes a newc archive.
type cpioWriter struct {
	buf  bytes.Buffer
	ino  int
	dirs map[string]bool
}

func (c *cpioWriter) entry(name string, mode uint32, data []byte) {
	c.ino++
	fmt.Fprintf(&c.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	c.buf.WriteString(name)
	c.buf.WriteByte(0)
	c.pad()
	c.buf.Write(data)
	c.pad()
}

func (c *cpioWriter) pad() {
	for c.buf.Len()%4 != 0 {
		c.buf.WriteByte(0)
	}
}

func (c *cpioWriter) dir(name string) {
	if c.dirs == nil {
		c.dirs = map[string]bool{}
	}
	if name == "." || c.dirs[name] {
		return
	}
	c.dir(filepath.Dir(name))
	c.dirs[name] = true
	c.entry(name, 0o040755, nil)
}

func (c *cpioWriter) file(name string, mode uint32, data []byte) {
	c.dir(filepath.Dir(name))
	c.entry(name, 0o100000|mode, data)
}

func (c *cpioWriter) bytes() []byte {
	c.entry("TRAILER!!!", 0, nil)
	return c.buf.Bytes()
}

// guestDHCPScript, at the start of a guest's /init, writes /etc/dhcp.sh,
// the script busybox udhcpc runs with a lease: it reports the lease on
// the console as GOPASST-${TAG}LEASE, configures the interface (its MTU
// too, when the lease has one) and a default route, and adds the
// resolvers to $RESOLV when that is set. It also writes /bin/listening,
// for a guest's scripts to wait until their servers listen: "listening t
// PORT" (TCP) or "listening u PORT" (UDP) waits up to 10 s.
const guestDHCPScript = `cat > /bin/listening <<'EOS'
#!/bin/sh
for i in $(seq 100); do netstat -ln$1 | grep -q ":$2 " && exit 0; sleep 0.1; done
exit 1
EOS
chmod +x /bin/listening
cat > /etc/dhcp.sh <<'EOS'
#!/bin/sh
[ "$1" = bound ] || exit 0
echo "GOPASST-${TAG}LEASE ip=$ip mask=$mask router=$router dns=$dns mtu=$mtu domain=$domain"
ip addr add $ip/$mask dev $interface
[ -n "$mtu" ] && ip link set $interface mtu $mtu
ip route add default via $router
[ -n "$RESOLV" ] && for d in $dns; do echo "nameserver $d" >> $RESOLV; done
exit 0
EOS
chmod +x /etc/dhcp.sh
`

// needQEMU returns QEMU and the Debian kernel (image and version) that
// guest tests boot, or skips the test.
func needQEMU(t testing.TB) (qemu, kernel, kver string) {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("needs qemu-system-x86_64 (Debian package qemu-system-x86)")
	}
	kernel, kver, err = debianKernel()
	if err != nil {
		t.Skip(err)
	}
	return qemu, kernel, kver
}

// buildForGuest builds the Go package pkg (relative to tests/) into dir
// as a static binary, since the guest has no libc, and returns its path.
func buildForGuest(t testing.TB, dir, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, path.Base(pkg))
	build := exec.Command("go", "build", "-o", out, pkg)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building %s for the guest: %v\n%s", pkg, err, b)
	}
	return out
}

// buildInitramfs writes an initramfs that loads virtio networking (and
// the modules named), then runs script as /init (under busybox sh). extra
// maps guest paths to host files to include (test programs).
func buildInitramfs(path, kver, script string, extra map[string]string, modules ...string) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("busybox: %w (Debian package busybox-static)", err)
	}
	mods, err := moduleClosure(kver, append([]string{"virtio_pci", "virtio_net"}, modules...)...)
	if err != nil {
		return err
	}
	var c cpioWriter
	for _, d := range []string{"dev", "proc", "sys", "tmp", "etc", "sbin", "usr/bin", "usr/sbin"} {
		c.dir(d)
	}
	c.file("bin/busybox", 0o755, bb)
	for guestPath, hostPath := range extra {
		data, err := os.ReadFile(hostPath)
		if err != nil {
			return err
		}
		c.file(strings.TrimPrefix(guestPath, "/"), 0o755, data)
	}
	var load strings.Builder
	for _, m := range mods {
		data, err := os.ReadFile(m)
		if err != nil {
			return err
		}
		c.file("lib/modules/"+filepath.Base(m), 0o644, data)
		fmt.Fprintf(&load, "insmod /lib/modules/%s\n", filepath.Base(m))
	}
	init := "#!/bin/busybox sh\n/bin/busybox --install -s\n" +
		"mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n" +
		load.String() + script + "\npoweroff -f\n"
	c.file("init", 0o755, []byte(init))
	return os.WriteFile(path, c.bytes(), 0o644)
}
