package main

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"time"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// ratePoint is one rate of the rates scenario, for the plot.
type ratePoint struct {
	relayRate, loopRate float64          // rows a second written through each
	relay, loop         [2]time.Duration // p50, p99
}

// plot is a log-log chart of latency against rate: p50 and p99 of the
// relay and of the minimal loop, drawn with the standard library and a
// bitmap font.
type plot struct {
	img                    *image.RGBA
	left, top, w, h        int
	xmin, xmax, ymin, ymax float64 // log10 of the axes' ends
}

var (
	relayColor = color.RGBA{0x1f, 0x77, 0xb4, 0xff}
	loopColor  = color.RGBA{0xd6, 0x27, 0x28, 0xff}
	gridColor  = color.RGBA{0xdd, 0xdd, 0xdd, 0xff}
	inkColor   = color.RGBA{0x22, 0x22, 0x22, 0xff}
)

// writePlot draws points into a PNG file at path.
func writePlot(path string, points []ratePoint) error {
	if len(points) == 0 {
		return fmt.Errorf("no rates measured")
	}
	p := &plot{img: image.NewRGBA(image.Rect(0, 0, 760, 460)), left: 70, top: 40, w: 520, h: 360}
	for i := range p.img.Pix {
		p.img.Pix[i] = 0xff
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, pt := range points {
		for _, d := range []time.Duration{pt.relay[0], pt.relay[1], pt.loop[0], pt.loop[1]} {
			lo, hi = min(lo, msOf(d)), max(hi, msOf(d))
		}
	}
	top := 1.0
	for _, pt := range points {
		top = max(top, pt.relayRate, pt.loopRate)
	}
	p.xmin, p.xmax = 0.5, math.Log10(top)+0.3
	p.ymin, p.ymax = math.Floor(math.Log10(max(lo, 0.1))), math.Ceil(math.Log10(max(hi, 1)))
	p.axes()
	p.text(p.left, 14, "commit to consumer latency against rows/s written (log-log)")
	p.text(p.left, 30, "relay: blue, minimal loop: red; p50 solid, p99 dashed")
	for _, s := range []struct {
		c      color.RGBA
		dashed bool
		xy     func(ratePoint) (float64, time.Duration)
	}{
		{relayColor, false, func(pt ratePoint) (float64, time.Duration) { return pt.relayRate, pt.relay[0] }},
		{relayColor, true, func(pt ratePoint) (float64, time.Duration) { return pt.relayRate, pt.relay[1] }},
		{loopColor, false, func(pt ratePoint) (float64, time.Duration) { return pt.loopRate, pt.loop[0] }},
		{loopColor, true, func(pt ratePoint) (float64, time.Duration) { return pt.loopRate, pt.loop[1] }},
	} {
		var px, py int
		for i, pt := range points {
			r, d := s.xy(pt)
			x, y := p.at(r, msOf(d))
			p.dot(x, y, s.c)
			if i > 0 {
				p.line(px, py, x, y, s.c, s.dashed)
			}
			px, py = x, y
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, p.img); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// at maps a rate and a latency in ms to pixels.
func (p *plot) at(rate, ms float64) (int, int) {
	fx := (math.Log10(rate) - p.xmin) / (p.xmax - p.xmin)
	fy := (math.Log10(max(ms, 1e-3)) - p.ymin) / (p.ymax - p.ymin)
	return p.left + int(fx*float64(p.w)), p.top + p.h - int(fy*float64(p.h))
}

// axes draws the frame, a grid line and a label at each power of ten.
func (p *plot) axes() {
	for e := math.Ceil(p.xmin); e <= p.xmax; e++ {
		x, _ := p.at(math.Pow(10, e), math.Pow(10, p.ymin))
		p.line(x, p.top, x, p.top+p.h, gridColor, false)
		p.text(x-8, p.top+p.h+16, fmt.Sprintf("%g", math.Pow(10, e)))
	}
	for e := p.ymin; e <= p.ymax; e++ {
		_, y := p.at(math.Pow(10, p.xmin), math.Pow(10, e))
		p.line(p.left, y, p.left+p.w, y, gridColor, false)
		p.text(p.left-44, y+4, fmt.Sprintf("%g ms", math.Pow(10, e)))
	}
	p.text(p.left+p.w/2-30, p.top+p.h+34, "rows/s")
	p.line(p.left, p.top, p.left, p.top+p.h, inkColor, false)
	p.line(p.left, p.top+p.h, p.left+p.w, p.top+p.h, inkColor, false)
}

// line draws from (x0, y0) to (x1, y1), dashed or not.
func (p *plot) line(x0, y0, x1, y1 int, c color.RGBA, dashed bool) {
	n := max(abs(x1-x0), abs(y1-y0), 1)
	for i := 0; i <= n; i++ {
		if dashed && (i/6)%2 == 1 {
			continue
		}
		x, y := x0+(x1-x0)*i/n, y0+(y1-y0)*i/n
		p.img.SetRGBA(x, y, c)
		p.img.SetRGBA(x, y+1, c)
	}
}

func (p *plot) dot(x, y int, c color.RGBA) {
	for dx := -3; dx <= 3; dx++ {
		for dy := -3; dy <= 3; dy++ {
			p.img.SetRGBA(x+dx, y+dy, c)
		}
	}
}

func (p *plot) text(x, y int, s string) {
	d := font.Drawer{Dst: p.img, Src: image.NewUniform(inkColor), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}
