package relay_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine a relay starts must be gone when Run returns.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
