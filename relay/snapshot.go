package relay

import (
	"slices"
	"strconv"
	"strings"
)

// snapshot is a PostgreSQL snapshot (pg_snapshot): transactions before
// xmin had ended, those from xmax on had not begun, and those in xip
// between were running.
type snapshot struct {
	xmin, xmax uint64
	xip        []uint64
}

// parseSnapshot reads the text form of a pg_snapshot, "xmin:xmax:xip,...";
// the zero snapshot, which sees nothing, if it cannot.
func parseSnapshot(s string) snapshot {
	fields := strings.Split(s, ":")
	if len(fields) != 3 {
		return snapshot{}
	}
	var sn snapshot
	var err1, err2 error
	sn.xmin, err1 = strconv.ParseUint(fields[0], 10, 64)
	sn.xmax, err2 = strconv.ParseUint(fields[1], 10, 64)
	if err1 != nil || err2 != nil || sn.xmin > sn.xmax {
		return snapshot{}
	}
	if fields[2] != "" {
		for _, f := range strings.Split(fields[2], ",") {
			x, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				return snapshot{}
			}
			sn.xip = append(sn.xip, x)
		}
	}
	return sn
}

// sees reports whether transaction x had ended when the snapshot was
// taken, as pg_visible_in_snapshot says: a notifying transaction that had
// ended had committed.
func (s snapshot) sees(x uint64) bool {
	return x < s.xmin || x < s.xmax && !slices.Contains(s.xip, x)
}
