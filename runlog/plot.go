package runlog

import (
	"bytes"
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

var (
	blue   = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	orange = color.RGBA{R: 255, G: 127, B: 14, A: 255}
	green  = color.RGBA{R: 44, G: 160, B: 44, A: 255}
	purple = color.RGBA{R: 148, G: 103, B: 189, A: 255}
)

// WritePlot draws the run's curves against step in three stacked panels that
// share the step axis: training and eval loss, learning rate, tokens per
// second. format is "png" or "svg".
func WritePlot(w io.Writer, s Series, format, title string) error {
	if len(s.Loss)+len(s.EvalLoss) == 0 {
		return fmt.Errorf("plot: no loss to draw (no step lines in metrics.jsonl or the rank logs)")
	}
	const width, height = 9 * vg.Inch, 10 * vg.Inch
	var c vg.CanvasWriterTo
	switch format {
	case "png":
		c = vgimg.PngCanvas{Canvas: vgimg.New(width, height)}
	case "svg":
		c = vgsvg.New(width, height)
	default:
		return fmt.Errorf("plot: unknown format %q: use .png or .svg", format)
	}
	lossP, err := panel(title, "loss", []curve{{"train loss", s.Loss, blue, false}, {"eval loss", s.EvalLoss, orange, true}})
	if err != nil {
		return err
	}
	lrP, err := panel("", "learning rate", []curve{{"", s.LR, green, false}})
	if err != nil {
		return err
	}
	tpsP, err := panel("", "tokens/s", []curve{{"", s.TokensPerS, purple, false}})
	if err != nil {
		return err
	}
	tpsP.X.Label.Text = "step"
	// One step range for every panel, so that they line up, with a margin
	// so that a point on the first or last step (a final eval) is not drawn
	// on the frame.
	lo, hi := stepRange([]*plot.Plot{lossP, lrP, tpsP})
	plots := [][]*plot.Plot{{lossP}, {lrP}, {tpsP}}
	for _, row := range plots {
		row[0].X.Min, row[0].X.Max = lo, hi
		row[0].X.Tick.Marker = stepTicks{}
	}
	dc := draw.New(c)
	// Paint the background once: vgimg starts transparent.
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	tiles := draw.Tiles{Rows: 3, Cols: 1, PadTop: vg.Points(6), PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(12), PadY: vg.Points(12)}
	canvases := plot.Align(plots, tiles, dc)
	for i, row := range plots {
		row[0].Draw(canvases[i][0])
	}
	if _, err := c.WriteTo(w); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}

// PlotRun draws the curves of the run in the directory run into the file
// path, a .png or .svg: from RUN/metrics.jsonl, or from the rank logs when
// there is none. It writes to w what it drew and from where, and how many
// malformed lines of metrics.jsonl it skipped.
func PlotRun(run, path string, w io.Writer) error {
	var series Series
	source := filepath.Join(run, "metrics.jsonl")
	f, err := os.Open(source)
	switch {
	case err == nil:
		var bad int
		series, bad, err = ReadMetrics(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", source, err)
		}
		if bad > 0 {
			fmt.Fprintf(w, "%s: %d malformed lines skipped\n", source, bad)
		}
	case errors.Is(err, os.ErrNotExist):
		logs, err := ReadRun(run)
		if err != nil {
			return fmt.Errorf("%s: no metrics.jsonl, and %w", run, err)
		}
		series, source = SeriesFromRanks(logs), filepath.Join(run, "logs")
	default:
		return err
	}
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), ".")
	var buf bytes.Buffer
	if err := WritePlot(&buf, series, format, filepath.Base(filepath.Clean(run))); err != nil {
		return fmt.Errorf("%s: %w", run, err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	_, err = fmt.Fprintf(w, "wrote %s: %d steps, %d eval points, from %s\n", path, len(series.Loss), len(series.EvalLoss), source)
	return err
}

// stepRange is the step range the panels share: every panel's, widened by 3%
// of its width (at least half a step) on each side.
func stepRange(ps []*plot.Plot) (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, p := range ps {
		lo, hi = math.Min(lo, p.X.Min), math.Max(hi, p.X.Max)
	}
	pad := math.Max(0.5, 0.03*(hi-lo))
	return lo - pad, hi + pad
}

// stepTicks labels the step axis at 5 to 10 round steps (1, 2 or 5 times a
// power of ten apart), with unlabelled minor ticks between them; gonum's
// default labels as few as three.
type stepTicks struct{}

func (stepTicks) Ticks(min, max float64) []plot.Tick {
	if !(max > min) {
		return []plot.Tick{{Value: min, Label: strconv.FormatFloat(min, 'f', -1, 64)}}
	}
	span := max - min
	step := math.Pow(10, math.Floor(math.Log10(span/5)))
	for _, m := range []float64{1, 2, 5, 10} {
		if span/(step*m) <= 10 {
			step *= m
			break
		}
	}
	step = math.Max(step, 1) // steps are whole
	var ticks []plot.Tick
	minor := step / 5
	if step < 5 {
		minor = 0
	}
	for v := math.Ceil(min/step) * step; v <= max; v += step {
		ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
		for k := 1.0; minor > 0 && k < 5 && v+k*minor <= max; k++ {
			ticks = append(ticks, plot.Tick{Value: v + k*minor})
		}
	}
	return ticks
}

type curve struct {
	name   string
	pts    []Point
	col    color.Color
	points bool // draw the points too (eval loss is sparse)
}

func panel(title, ylabel string, curves []curve) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	for _, c := range curves {
		if len(c.pts) == 0 {
			continue
		}
		xys := make(plotter.XYs, 0, len(c.pts))
		for _, q := range c.pts {
			if math.IsNaN(q.Value) || math.IsInf(q.Value, 0) {
				continue // a skipped step: nothing to draw
			}
			xys = append(xys, plotter.XY{X: float64(q.Step), Y: q.Value})
		}
		if len(xys) == 0 {
			continue
		}
		line, err := plotter.NewLine(xys)
		if err != nil {
			return nil, fmt.Errorf("plot %s: %w", ylabel, err)
		}
		line.Color, line.Width = c.col, vg.Points(1.5)
		p.Add(line)
		if c.points {
			sc, err := plotter.NewScatter(xys)
			if err != nil {
				return nil, fmt.Errorf("plot %s: %w", ylabel, err)
			}
			sc.Color, sc.Shape, sc.Radius = c.col, draw.CircleGlyph{}, vg.Points(3)
			if len(xys) == 1 {
				sc.Radius = vg.Points(5) // a lone point (one eval) must be seen
			}
			p.Add(sc)
		}
		if c.name != "" {
			p.Legend.Add(c.name, line)
		}
	}
	return p, nil
}
