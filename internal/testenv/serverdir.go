package testenv

import (
	"os"
	"os/user"
	"strconv"
	"syscall"
	"testing"
)

// serverDir makes a temporary directory, removed in t.Cleanup, for a server
// program that refuses to run as root (PostgreSQL, PgBouncer). As root, the
// directory belongs to user postgres and the returned credential runs the
// program as that user; otherwise the credential is nil. Not t.TempDir: it
// is under a 0700 directory of root's that the postgres user cannot enter.
func serverDir(t testing.TB, prefix, what string) (string, *syscall.Credential) {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if os.Geteuid() != 0 {
		return dir, nil
	}
	owner, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("%s refuses to run as root and there is no postgres user to run it as: %v", what, err)
	}
	uid, _ := strconv.ParseUint(owner.Uid, 10, 32)
	gid, _ := strconv.ParseUint(owner.Gid, 10, 32)
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if err := os.Chown(dir, int(uid), int(gid)); err != nil {
		t.Fatal(err)
	}
	return dir, cred
}

// writeOwned writes a file in a serverDir that the program run with cred
// can read.
func writeOwned(t testing.TB, path, content string, cred *syscall.Credential) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
}
