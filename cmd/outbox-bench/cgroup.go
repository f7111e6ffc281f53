package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
)

// cgroupCPURoot is where the cgroup v1 cpu controller is mounted.
const cgroupCPURoot = "/sys/fs/cgroup/cpu"

// cfsPeriod is the CFS period the scale scenario's cgroups use, in
// microseconds: the kernel's default.
const cfsPeriod = 100_000

// cfsQuota returns the cpu.cfs_quota_us that caps a cgroup to cores of
// CPU over a period of period microseconds. The kernel refuses a quota
// below 1ms.
func cfsQuota(cores float64, period int) (int, error) {
	if !(cores > 0) || math.IsInf(cores, 0) {
		return 0, fmt.Errorf("a CPU cap must be a positive number of cores, got %g", cores)
	}
	q := int(math.Round(cores * float64(period)))
	if q < 1000 {
		return 0, fmt.Errorf("%g core over a %dus period is a quota of %dus, below the kernel's 1000us", cores, period, q)
	}
	return q, nil
}

// cpuCaps are cgroups of the cgroup v1 cpu controller, one for each relay
// process of the scale scenario, each capped to the same share of a core:
// <cgroupCPURoot>/outbox-bench-<pid>-<i>/.
type cpuCaps struct {
	dirs []string
}

// newCPUCaps creates n cgroups capped to cores each. The caller removes
// them with remove once the processes put in them have exited. On an
// error, none is left behind.
func newCPUCaps(n int, cores float64) (*cpuCaps, error) {
	quota, err := cfsQuota(cores, cfsPeriod)
	if err != nil {
		return nil, err
	}
	c := &cpuCaps{}
	for i := range n {
		dir := filepath.Join(cgroupCPURoot, fmt.Sprintf("outbox-bench-%d-%d", os.Getpid(), i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, errors.Join(fmt.Errorf("create cgroup: %w", err), c.remove())
		}
		c.dirs = append(c.dirs, dir)
		// The period first: a quota is checked against the period in place.
		if err := writeCgroup(dir, "cpu.cfs_period_us", cfsPeriod); err != nil {
			return nil, errors.Join(err, c.remove())
		}
		if err := writeCgroup(dir, "cpu.cfs_quota_us", quota); err != nil {
			return nil, errors.Join(err, c.remove())
		}
	}
	return c, nil
}

// add moves process pid, all its threads, into cgroup i.
func (c *cpuCaps) add(i, pid int) error {
	return writeCgroup(c.dirs[i], "cgroup.procs", pid)
}

// remove removes the cgroups, which must hold no process by then.
func (c *cpuCaps) remove() error {
	var errs []error
	for _, dir := range c.dirs {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
		}
	}
	c.dirs = nil
	return errors.Join(errs...)
}

func writeCgroup(dir, file string, v int) error {
	if err := os.WriteFile(filepath.Join(dir, file), []byte(strconv.Itoa(v)), 0o644); err != nil {
		return fmt.Errorf("write cgroup %s: %w", file, err)
	}
	return nil
}
