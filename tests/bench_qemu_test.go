package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBenchQEMU measures the users' path: a real QEMU guest under TCG
// (the same kernel and initramfs as TestQEMUGuest, one vCPU, 512 MiB),
// with iperf3 each way and TCP_RR to a host service through the gateway,
// for gopasst and upstream passt, each over the stream socket and over
// vhost-user, and over vhost-user again with the guest at MTU 1500
// (gopasst with and without large receive). Rounds alternate between
// them, each first in turn; medians are reported in bench/QEMU.md. It
// runs only under "make bench".
func TestBenchQEMU(t *testing.T) {
	needBench(t)
	qemu, kernel, kver := needQEMU(t)
	iperf3, err := exec.LookPath("iperf3")
	if err != nil {
		t.Skip("needs iperf3")
	}
	passt, err := passtPath()
	if err != nil {
		t.Skip(err)
	}
	rounds, _ := strconv.Atoi(os.Getenv("GOPASST_BENCH_QEMU_ROUNDS"))
	if rounds == 0 {
		rounds = 3
	}
	dir := t.TempDir()
	tcprr := buildForGuest(t, dir, "./cmd/tcprr")
	files := map[string]string{"/bin/tcprr": tcprr}
	if err := addWithLibraries(files, iperf3); err != nil {
		t.Fatal(err)
	}
	configs := []qemuConfig{
		{name: "gopasst stream"},
		{name: "gopasst vhost-user", args: []string{"--vhost-user"}, vhost: true},
		{name: "passt stream", backend: []string{passt, "-f", "-q", "-s", "{sock}"}},
		{name: "passt vhost-user", backend: []string{passt, "-f", "-q", "--vhost-user", "-s", "{sock}"}, vhost: true},
		{name: "gopasst vhost-user @1500", args: []string{"--vhost-user", "--mtu", "1500"}, vhost: true},
		{name: "gopasst vhost-user @1500, no large receive", args: []string{"--vhost-user", "--mtu", "1500"}, vhost: true,
			device: "guest_tso4=off,guest_tso6=off"},
		{name: "passt vhost-user @1500", backend: []string{passt, "-f", "-q", "--vhost-user", "--mtu", "1500", "-s", "{sock}"}, vhost: true},
	}
	configs = slices.DeleteFunc(configs, func(c qemuConfig) bool { return !benchSelected(c.name) })
	results := map[string]map[string][]float64{}
	for r := range rounds {
		for _, c := range inTurn(configs, r) {
			t.Run(fmt.Sprintf("%s/round%d", c.name, r), func(t *testing.T) {
				m := benchQEMUOne(t, c, qemu, kernel, kver, files)
				if results[c.name] == nil {
					results[c.name] = map[string][]float64{}
				}
				for k, v := range m {
					results[c.name][k] = append(results[c.name][k], v)
				}
			})
		}
	}
	writeQEMUReport(t, configs, results, rounds, passtVersion(passt), qemu, kver)
}

// qemuConfig is one way of serving the benchmark guest.
type qemuConfig struct {
	name    string
	args    []string // gopasst's options
	backend []string // or another backend's argv
	vhost   bool
	device  string // options for the guest's virtio-net device
}

// benchQEMUOne boots the guest on c once and returns what it measured.
func benchQEMUOne(t *testing.T, c qemuConfig, qemu, kernel, kver string, files map[string]string) map[string]float64 {
	w := newWorld(t, WorldOpts{NoGuest: true, Args: c.args, Backend: c.backend})
	w.VhostUser, w.Device = c.vhost, c.device
	srv := w.Host.Cmd("iperf3", "-s", "-B", "127.0.0.1", "-p", "5201")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	echo := byteEchoServer(t, w)
	const secs = 5
	script := fmt.Sprintf(guestDHCPScript+`ip link set lo up
ip link set eth0 up
RESOLV=/etc/resolv.conf udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /etc/dhcp.sh -O mtu
sleep 1
echo GOPASST-MARK up
iperf3 -c %[1]s -t %[2]d -f k | sed -n 's/.* \([0-9.]*\) Kbits\/sec.*receiver.*/GOPASST-UP \1/p'
echo GOPASST-MARK down
iperf3 -c %[1]s -t %[2]d -f k -R | sed -n 's/.* \([0-9.]*\) Kbits\/sec.*receiver.*/GOPASST-DOWN \1/p'
echo GOPASST-MARK rr
echo "GOPASST-RR $(tcprr %[1]s:%[3]s %[2]d)"
echo GOPASST-DONE
`, w.HostVia, secs, port(echo.Addr()))
	initrd := filepath.Join(w.Dir, "initrd.cpio")
	if err := buildInitramfs(initrd, kver, script, files); err != nil {
		t.Fatal(err)
	}
	pids := w.Pids()
	cpu := map[string]float64{}
	report := bootGuest(t, w, qemu, kernel, initrd, 512, func(k string) {
		if k == "MARK" || k == "DONE" {
			cpu[fmt.Sprint(len(cpu))] = procCPU(pids)
		}
	})
	m := map[string]float64{"private memory MiB": procPrivate(pids)}
	num := func(k string) float64 {
		v, _ := strconv.ParseFloat(strings.TrimSpace(strings.Join(report[k], "")), 64)
		return v
	}
	m["TCP guest→host Gbit/s"] = num("UP") / 1e6
	m["TCP host→guest Gbit/s"] = num("DOWN") / 1e6
	m["TCP_RR trans/s"] = num("RR")
	for i, dir := range []string{"guest→host", "host→guest"} {
		gb := m["TCP "+dir+" Gbit/s"] * secs / 8
		if gb > 0 {
			m["CPU s/GB "+dir] = (cpu[fmt.Sprint(i+1)] - cpu[fmt.Sprint(i)]) / gb
		}
	}
	t.Logf("%s: %v", c.name, m)
	return m
}

// addWithLibraries adds a dynamically linked program to files, with the
// libraries and loader ldd names, at the paths they have on the host.
func addWithLibraries(files map[string]string, bin string) error {
	files[bin] = bin
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return fmt.Errorf("ldd %s: %v", bin, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				files[f] = f
			}
		}
	}
	return nil
}

// writeQEMUReport writes bench/QEMU.md and logs its table: medians, and
// each gopasst figure against upstream passt's in the same mode.
func writeQEMUReport(t *testing.T, configs []qemuConfig, results map[string]map[string][]float64, rounds int, passtVer, qemu, kver string) {
	metrics := []string{"TCP guest→host Gbit/s", "TCP host→guest Gbit/s", "TCP_RR trans/s",
		"CPU s/GB guest→host", "CPU s/GB host→guest", "private memory MiB"}
	var b strings.Builder
	fmt.Fprintf(&b, "# Real QEMU guest benchmark\n\n%s, %d rounds, medians; QEMU %s under TCG (one vCPU, 512 MiB), guest kernel %s.\n",
		time.Now().UTC().Format("2006-01-02"), rounds, qemuVersion(qemu), kver)
	gv, _ := exec.Command(gopasstBin, "--version").Output()
	fmt.Fprintf(&b, "gopasst: %s; passt: %s.\n\n", strings.TrimSpace(string(gv)), passtVer)
	b.WriteString("| metric |")
	for _, c := range configs {
		b.WriteString(" " + c.name + " |")
	}
	ratios := [][3]string{ // column, numerator, denominator
		{"gopasst ÷ passt, stream", "gopasst stream", "passt stream"},
		{"gopasst ÷ passt, vhost-user", "gopasst vhost-user", "passt vhost-user"},
		{"gopasst vhost-user ÷ stream", "gopasst vhost-user", "gopasst stream"},
		{"gopasst ÷ passt, vhost-user @1500", "gopasst vhost-user @1500", "passt vhost-user @1500"},
		{"large receive: with ÷ without @1500", "gopasst vhost-user @1500", "gopasst vhost-user @1500, no large receive"},
	}
	for _, r := range ratios {
		b.WriteString(" " + r[0] + " |")
	}
	b.WriteString("\n|---|")
	for range len(configs) + len(ratios) {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, k := range metrics {
		fmt.Fprintf(&b, "| %s |", k)
		med := map[string]float64{}
		for _, c := range configs {
			med[c.name] = median(results[c.name][k])
			fmt.Fprintf(&b, " %s |", fmtFigure(med[c.name], results[c.name][k]))
		}
		for _, r := range ratios {
			if med[r[1]] == 0 || med[r[2]] == 0 {
				b.WriteString(" – |")
			} else {
				fmt.Fprintf(&b, " %.2f |", med[r[1]]/med[r[2]])
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("\nEach cell: the median, then the range of the rounds. CPU s/GB is the backend's own CPU time (gopasst's two processes) per GB moved; private memory is what the backend alone holds, so the guest memory a vhost-user backend maps is not counted.\n")
	os.MkdirAll("../bench", 0o755)
	if err := os.WriteFile("../bench/QEMU.md", []byte(b.String()), 0o644); err != nil {
		t.Error(err)
	}
	t.Log("\n" + b.String())
}

// fmtFigure is a median with the range of its samples.
func fmtFigure(med float64, v []float64) string {
	if len(v) == 0 {
		return "–"
	}
	lo, hi := v[0], v[0]
	for _, x := range v {
		lo, hi = min(lo, x), max(hi, x)
	}
	return fmt.Sprintf("%.3g (%.3g–%.3g)", med, lo, hi)
}

func qemuVersion(qemu string) string {
	out, _ := exec.Command(qemu, "--version").Output()
	v, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimPrefix(strings.TrimSpace(v), "QEMU emulator version ")
}
