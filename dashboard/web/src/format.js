// Formatting shared by the pages.

export const TERMINAL = new Set(["completed", "failed", "cancelled"]);

// The phases of a job in the order it passes through them.
export const PHASES = ["queued", "provisioning", "uploading", "training", "downloading", "tearing_down"];

export function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "—";
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (h) return `${h}h${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

export function usd(v) {
  return v == null ? "—" : `$${v.toFixed(v < 1 ? 4 : 2)}`;
}

export function rate(v) {
  if (!v) return "—";
  return v >= 1000 ? `${(v / 1000).toFixed(1)}K tok/s` : `${v.toFixed(0)} tok/s`;
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// The time a job ended (its terminal status's timestamp), or null while it runs.
export function endedAt(job) {
  if (!TERMINAL.has(job.status)) return null;
  const t = job.timestamps?.[job.status];
  return t ? new Date(t) : new Date(job.updated_at);
}

export function jobDuration(job, now) {
  const end = endedAt(job) ?? now;
  return (end - new Date(job.created_at)) / 1000;
}

export function gpuOf(job) {
  return job.machine?.gpu || job.gpu_type || "—";
}

// One line of the job's log for people: progress lines (JSON) are summarised, the rest are
// shown as they came.
export function logText(line) {
  if (line.stream !== "progress") {
    return line.text;
  }
  let e;
  try {
    e = JSON.parse(line.text);
  } catch {
    return line.text;
  }
  switch (e.event) {
    case "start":
      return `start: ${e.model} on ${e.device}, ${e.pairs_used} pairs, ${e.total_steps} steps`;
    case "step":
      return `step ${e.step}/${e.total_steps}  loss ${e.loss?.toFixed(4) ?? "—"}  ${rate(e.tokens_per_second)}`;
    case "eval":
      return `eval (${e.phase}) at step ${e.step}: loss ${e.eval_loss?.toFixed(4) ?? "—"}`;
    case "checkpoint":
      return `checkpoint at step ${e.step}`;
    case "done":
      return `done: ${e.files?.length ?? 0} files`;
    case "error":
      return `error ${e.code}: ${e.message}`;
    case "log":
      return e.message ?? line.text;
    default:
      return line.text;
  }
}
