// The train and eval loss curves of one job, drawn with uPlot.
import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

// Curves keeps a job's loss points by step, as the progress lines arrive.
export class Curves {
  constructor() {
    this.train = new Map();
    this.eval = new Map();
    // last is the newest step line (step, total_steps, tokens_per_second, eta_seconds):
    // the stream is ahead of the status document, which the service writes about once a
    // second and the page polls every two.
    this.last = null;
  }

  // add folds one progress line in; it says whether a point was added or changed.
  add(e) {
    if (e.event === "step" && (this.last == null || e.step >= this.last.step)) {
      this.last = e;
    }
    if (e.event === "step" && e.loss != null) {
      this.train.set(e.step, e.loss);
      return true;
    }
    if (e.event === "eval" && e.eval_loss != null) {
      this.eval.set(e.step, e.eval_loss);
      return true;
    }
    return false;
  }

  // data is the curves as uPlot wants them: one x array of steps, a y array per series
  // with null where the series has no point at that step.
  data() {
    const steps = [...new Set([...this.train.keys(), ...this.eval.keys()])].sort((a, b) => a - b);
    return [steps, steps.map((s) => this.train.get(s) ?? null), steps.map((s) => this.eval.get(s) ?? null)];
  }
}

export function LossChart({ curves, version }) {
  const box = useRef(null);
  const plot = useRef(null);

  useEffect(() => {
    const el = box.current;
    const opts = {
      width: Math.max(300, el.clientWidth - 16),
      height: 280,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { label: "loss" }],
      series: [
        { label: "step" },
        // Points show by themselves while the curve is sparse enough (a short run logs few
        // steps), and hide once it is dense.
        { label: "train loss", stroke: "#2563eb", width: 2, spanGaps: true },
        { label: "eval loss", stroke: "#dc2626", width: 2, spanGaps: true, points: { show: true, size: 6 } },
      ],
    };
    plot.current = new uPlot(opts, curves.data(), el);
    const ro = new ResizeObserver(() => plot.current?.setSize({ width: Math.max(300, el.clientWidth - 16), height: 280 }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
  }, [curves]);

  useEffect(() => {
    plot.current?.setData(curves.data());
  }, [curves, version]);

  return (
    <div
      class="chart"
      ref={box}
      id="loss-chart"
      data-train-points={curves.train.size}
      data-eval-points={curves.eval.size}
      data-last-step={curves.last?.step ?? 0}
    />
  );
}
