package main

import (
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWritePlot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rates.png")
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	points := []ratePoint{
		{relayRate: 10, loopRate: 10, relay: [2]time.Duration{ms(1.8), ms(7)}, loop: [2]time.Duration{ms(1.4), ms(4.8)}},
		{relayRate: 1000, loopRate: 950, relay: [2]time.Duration{ms(1.8), ms(9.3)}, loop: [2]time.Duration{ms(1), ms(5.2)}},
	}
	if err := writePlot(path, points); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	// Both series are drawn: a pixel of each colour somewhere.
	seen := map[[3]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			seen[[3]uint32{r >> 8, g >> 8, bl >> 8}] = true
		}
	}
	for name, c := range map[string][3]uint32{"relay": {0x1f, 0x77, 0xb4}, "loop": {0xd6, 0x27, 0x28}} {
		if !seen[c] {
			t.Errorf("no %s pixel in the plot", name)
		}
	}
	if err := writePlot(path, nil); err == nil {
		t.Error("a plot of no points was written")
	}
}
