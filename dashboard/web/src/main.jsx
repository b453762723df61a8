// The dashboard: sign in with the API token (the service keeps the session in an HttpOnly
// cookie), the jobs table, and a job's page with its live loss curves, phase timeline, log
// tail and a cancel button.
import { render } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { call, jobPath, Unauthenticated } from "./api.js";
import { LossChart, Curves } from "./chart.jsx";
import { duration, endedAt, gpuOf, jobDuration, logText, PHASES, rate, TERMINAL, usd, when } from "./format.js";
import "./style.css";

const LOG_TAIL = 300;

function usePath() {
  const [path, setPath] = useState(location.pathname);
  useEffect(() => {
    const on = () => setPath(location.pathname);
    addEventListener("popstate", on);
    return () => removeEventListener("popstate", on);
  }, []);
  const go = useCallback((p) => {
    history.pushState(null, "", p);
    setPath(p);
  }, []);
  return [path, go];
}

// usePoll calls fn now and every ms milliseconds while active, and on sign-out calls out.
function usePoll(fn, ms, active, out) {
  useEffect(() => {
    if (!active) return undefined;
    let stopped = false;
    let timer;
    const tick = async () => {
      try {
        await fn();
      } catch (err) {
        if (err instanceof Unauthenticated) {
          out();
          return;
        }
      }
      if (!stopped) timer = setTimeout(tick, ms);
    };
    tick();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [fn, ms, active, out]);
}

function SignIn({ onIn }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = async (ev) => {
    ev.preventDefault();
    setBusy(true);
    setError("");
    try {
      await call("POST", "/api/v1/session", { token });
      setToken("");
      onIn();
    } catch (err) {
      if (err instanceof Unauthenticated) {
        setToken("");
        setError("That token is not this service's API token.");
      } else {
        setError(err.message);
      }
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <h1>Understudy training</h1>
      <form id="signin" method="post" action="/api/v1/session" onSubmit={submit}>
        <label for="token">API token</label>
        <input id="token" name="token" type="password" autocomplete="current-password" required
          value={token} onInput={(e) => setToken(e.currentTarget.value)} />
        <button type="submit" disabled={busy}>Sign in</button>
        {error && <p class="error" id="signin-error" role="alert">{error}</p>}
        <p class="hint">The token the service was started with (serve --token-file). The session is kept
          in a cookie that scripts cannot read; it ends when you sign out or the token changes.</p>
      </form>
    </main>
  );
}

function Status({ status }) {
  return <span class={`status status-${status}`}>{status.replace("_", " ")}</span>;
}

// pageSize is the jobs table's page: the page URL's ?limit= (1 to 100), else 100.
function pageSize() {
  const n = Number(new URLSearchParams(location.search).get("limit"));
  return Number.isInteger(n) && n >= 1 && n <= 100 ? n : 100;
}

// JobsPage lists the newest jobs a page at a time; "Older jobs" adds the next page (the
// API's cursor), and every poll refreshes all the pages shown.
function JobsPage({ go, out }) {
  const [jobs, setJobs] = useState(null);
  const [pages, setPages] = useState(1);
  const [older, setOlder] = useState(false);
  const [error, setError] = useState("");
  const size = pageSize();
  const load = useCallback(async () => {
    try {
      let all = [];
      let cursor = "";
      for (let n = 0; n < pages; n++) {
        const q = cursor ? `&cursor=${encodeURIComponent(cursor)}` : "";
        const r = await call("GET", `/api/v1/training?limit=${size}${q}`);
        all = all.concat(r.jobs);
        cursor = r.next_cursor || "";
        if (!cursor) break;
      }
      setJobs(all);
      setOlder(cursor !== "");
      setError("");
    } catch (err) {
      if (err instanceof Unauthenticated) throw err;
      setError(err.message);
    }
  }, [pages, size]);
  usePoll(load, 3000, true, out);
  const now = new Date();
  return (
    <main>
      <h2>Jobs</h2>
      {error && <p class="error" role="alert">{error}</p>}
      {jobs === null ? <p>Loading…</p> : jobs.length === 0 ? <p>No jobs yet.</p> : (
        <table id="jobs">
          <thead>
            <tr><th>Job</th><th>Status</th><th>Provider</th><th>GPU</th><th>Created</th><th>Duration</th><th class="num">Cost</th></tr>
          </thead>
          <tbody>
            {jobs.map((j) => (
              <tr key={j.train_id} data-train-id={j.train_id} onClick={() => go(`/jobs/${encodeURIComponent(j.train_id)}`)}>
                <td>
                  <a href={`/jobs/${encodeURIComponent(j.train_id)}`} onClick={(e) => e.preventDefault()}>{j.train_id}</a>
                  {j.error && <div class="row-error">{j.error.code}: {j.error.message}</div>}
                </td>
                <td><Status status={j.status} /></td>
                <td>{j.provider}</td>
                <td>{gpuOf(j)}</td>
                <td>{when(j.created_at)}</td>
                <td>{duration(jobDuration(j, now))}</td>
                <td class="num">{usd(j.cost_usd)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {jobs !== null && jobs.length > 0 && (
        <p class="pager">
          <span id="jobs-shown">{jobs.length} newest job{jobs.length === 1 ? "" : "s"}</span>
          {older && <button id="older-jobs" onClick={() => setPages((p) => p + 1)}>Older jobs</button>}
        </p>
      )}
    </main>
  );
}

// Timeline draws the phases the job went through, each as wide as the time it took.
function Timeline({ job, now }) {
  const stamps = job.timestamps ?? {};
  const order = [...PHASES, "completed", "failed", "cancelled"].filter((p) => stamps[p]);
  order.sort((a, b) => new Date(stamps[a]) - new Date(stamps[b]));
  const end = endedAt(job) ?? now;
  const segs = order
    .filter((p) => !TERMINAL.has(p))
    .map((p, i, arr) => {
      const start = new Date(stamps[p]);
      const next = arr[i + 1] ? new Date(stamps[arr[i + 1]]) : end;
      return { phase: p, start, secs: Math.max(0, (next - start) / 1000) };
    });
  const total = segs.reduce((a, s) => a + s.secs, 0) || 1;
  return (
    <div id="timeline">
      <div class="bar">
        {segs.map((s) => (
          <div key={s.phase} class={`seg phase-${s.phase}`} data-phase={s.phase}
            style={{ flexGrow: Math.max(s.secs / total, 0.02) }} title={`${s.phase}: ${duration(s.secs)}`} />
        ))}
      </div>
      <ol class="legend">
        {segs.map((s) => (
          <li key={s.phase}><span class={`dot phase-${s.phase}`} />{s.phase.replace("_", " ")} {duration(s.secs)}</li>
        ))}
        {TERMINAL.has(job.status) && <li><Status status={job.status} /> at {when(stamps[job.status])}</li>}
      </ol>
    </div>
  );
}

function CancelButton({ job, out, onDone }) {
  const [asking, setAsking] = useState(false);
  const [error, setError] = useState("");
  if (TERMINAL.has(job.status)) return null;
  if (job.cancel_requested) return <p class="note" id="cancel-pending">Cancel requested: the machine is being stopped and torn down.</p>;
  const cancel = async () => {
    try {
      await call("POST", `${jobPath(job.train_id)}/cancel`);
      setAsking(false);
      onDone();
    } catch (err) {
      if (err instanceof Unauthenticated) out();
      else setError(err.message);
    }
  };
  return (
    <div class="cancel">
      {asking ? (
        <span>
          Cancel this job? Its machine is torn down and no weights are stored.{" "}
          <button id="cancel-confirm" class="danger" onClick={cancel}>Yes, cancel</button>{" "}
          <button onClick={() => setAsking(false)}>Keep running</button>
        </span>
      ) : (
        <button id="cancel" class="danger" onClick={() => setAsking(true)}>Cancel job</button>
      )}
      {error && <p class="error" role="alert">{error}</p>}
    </div>
  );
}

// useLog follows the job's log stream (server-sent events): it keeps the tail and folds the
// progress lines into the loss curves. The browser resumes a dropped stream where it left
// off (Last-Event-ID).
function useLog(id) {
  const [curves, setCurves] = useState(() => new Curves());
  const [version, setVersion] = useState(0);
  const tail = useRef([]);
  useEffect(() => {
    const c = new Curves();
    setCurves(c);
    tail.current = [];
    let pending = false;
    const bump = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        setVersion((v) => v + 1);
      });
    };
    const es = new EventSource(`${jobPath(id)}/logs`);
    es.addEventListener("log", (ev) => {
      const line = JSON.parse(ev.data);
      if (line.stream === "progress") {
        try {
          c.add(JSON.parse(line.text));
        } catch {
          // A line that is not JSON is only shown.
        }
      }
      tail.current.push(line);
      if (tail.current.length > LOG_TAIL * 2) tail.current = tail.current.slice(-LOG_TAIL);
      bump();
    });
    es.addEventListener("end", () => es.close());
    return () => es.close();
  }, [id]);
  return { curves, version, tail: tail.current.slice(-LOG_TAIL) };
}

// LogTail shows the end of the job's log. Pulumi's own output (the stack's resources, its
// advice to operators) is folded into one line per run of it unless asked for, as the CLI's
// follow view does; the log keeps all of it.
function LogTail({ lines }) {
  const box = useRef(null);
  const [pulumi, setPulumi] = useState(false);
  useEffect(() => {
    const el = box.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [lines.length, pulumi]);
  const shown = [];
  for (const l of lines) {
    const prev = shown[shown.length - 1];
    if (!pulumi && l.stream === "pulumi") {
      if (prev?.folded) prev.folded += 1;
      else shown.push({ ...l, folded: 1 });
      continue;
    }
    shown.push(l);
  }
  return (
    <>
      <label class="toggle"><input id="show-pulumi" type="checkbox" checked={pulumi}
        onChange={(e) => setPulumi(e.currentTarget.checked)} /> Pulumi output</label>
      <pre id="log" ref={box}>
        {shown.map((l) => l.folded ? (
          <div key={l.seq} class="log-pulumi">
            <span class="t">{new Date(l.time).toLocaleTimeString()}</span> <span class="s">pulumi</span> ({l.folded} lines of Pulumi output)
          </div>
        ) : (
          <div key={l.seq} class={`log-${l.stream}`}>
            <span class="t">{new Date(l.time).toLocaleTimeString()}</span> <span class="s">{l.stream}</span> {logText(l)}
          </div>
        ))}
      </pre>
    </>
  );
}

// Metrics lists the runtime's final metrics of a completed job (held-out loss before and
// after, generation scores), numbers rounded.
function Metrics({ metrics }) {
  const rows = Object.entries(metrics ?? {}).filter(([, v]) => typeof v === "number" || typeof v === "string");
  if (rows.length === 0) return null;
  return (
    <>
      <h3>Metrics</h3>
      <table id="metrics" class="compact">
        <tbody>
          {rows.map(([k, v]) => (
            <tr key={k}><th>{k.replaceAll("_", " ")}</th><td class="num">{typeof v === "number" ? +v.toPrecision(5) : v}</td></tr>
          ))}
        </tbody>
      </table>
    </>
  );
}

// Attempts lists the machines a job ran on when there was more than one (a preempted or
// lost machine was replaced and training resumed from its checkpoint).
function Attempts({ attempts }) {
  if (!attempts || attempts.length < 2) return null;
  return (
    <>
      <h3>Machines</h3>
      <table id="attempts" class="compact">
        <thead><tr><th>#</th><th>From step</th><th>To step</th><th>Ended</th><th class="num">Cost</th></tr></thead>
        <tbody>
          {attempts.map((a) => (
            <tr key={a.number}>
              <td>{a.number}</td><td>{a.resumed_from_step}</td><td>{a.step}</td>
              <td>{a.reason ? `${a.reason}${a.message ? `: ${a.message}` : ""}` : "running"}</td>
              <td class="num">{usd(a.cost_usd)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}

// Progress is the job's step, rate and ETA: from the log stream's newest step line while the
// job runs and the stream is ahead of the polled status, else from the status.
function Progress({ job, last }) {
  const live = !TERMINAL.has(job.status);
  const p = live && last && last.step > job.progress.step ? last : job.progress;
  return (
    <>
      {p.total_steps ? `step ${p.step}/${p.total_steps}` : "—"}
      {p.tokens_per_second ? `, ${rate(p.tokens_per_second)}` : ""}
      {live && p.eta_seconds != null ? `, ETA ${duration(p.eta_seconds)}` : ""}
    </>
  );
}

function JobPage({ id, go, out }) {
  const [job, setJob] = useState(null);
  const [error, setError] = useState("");
  const load = useCallback(async () => {
    try {
      setJob(await call("GET", `${jobPath(id)}/status`));
      setError("");
    } catch (err) {
      if (err instanceof Unauthenticated) throw err;
      setError(err.message);
    }
  }, [id]);
  const live = !job || !TERMINAL.has(job.status);
  usePoll(load, 2000, live, out);
  const { curves, version, tail } = useLog(id);
  const now = new Date();
  return (
    <main>
      <p><a href="/" onClick={(e) => { e.preventDefault(); go("/"); }}>← All jobs</a></p>
      {error && <p class="error" role="alert">{error}</p>}
      {job && (
        <>
          <header class="job-head">
            <h2 id="job-id">{job.train_id}</h2>
            <span id="job-status"><Status status={job.status} /></span>
            <CancelButton job={job} out={out} onDone={load} />
          </header>
          <dl class="facts">
            <dt>Provider</dt><dd>{job.provider}</dd>
            <dt>GPU</dt><dd>{gpuOf(job)}</dd>
            <dt>Model</dt><dd>{job.slm_type}</dd>
            <dt>Pairs</dt><dd>{job.training_pairs_count}</dd>
            <dt>Progress</dt>
            <dd id="progress"><Progress job={job} last={curves.last} /></dd>
            <dt>Duration</dt><dd>{duration(jobDuration(job, now))}</dd>
            <dt>Cost</dt><dd id="cost">{usd(job.cost_usd)}</dd>
            {job.weights_uri && <><dt>Weights</dt><dd id="weights"><code>{job.weights_uri}</code></dd></>}
          </dl>
          {job.error && <p class="error" id="job-error">{job.error.code}: {job.error.message}</p>}
          <Metrics metrics={job.weights_manifest?.metrics} />
          <Attempts attempts={job.attempts} />
          <h3>Phases</h3>
          <Timeline job={job} now={now} />
        </>
      )}
      <h3>Loss</h3>
      <LossChart curves={curves} version={version} />
      <h3>Log</h3>
      <LogTail lines={tail} />
    </main>
  );
}

function App() {
  const [auth, setAuth] = useState("unknown");
  const [path, go] = usePath();
  const out = useCallback(() => setAuth("out"), []);
  useEffect(() => {
    call("GET", "/api/v1/training?limit=1")
      .then(() => setAuth("in"))
      .catch((err) => setAuth(err instanceof Unauthenticated ? "out" : "in"));
  }, []);
  if (auth === "unknown") return <main><p>Loading…</p></main>;
  if (auth === "out") return <SignIn onIn={() => setAuth("in")} />;
  const signOut = async () => {
    try {
      await call("DELETE", "/api/v1/session");
    } finally {
      setAuth("out");
    }
  };
  const m = path.match(/^\/jobs\/([^/]+)$/);
  return (
    <>
      <nav>
        <a href="/" class="brand" onClick={(e) => { e.preventDefault(); go("/"); }}>Understudy training</a>
        <button id="signout" onClick={signOut}>Sign out</button>
      </nav>
      {m ? <JobPage id={decodeURIComponent(m[1])} go={go} out={out} /> : <JobsPage go={go} out={out} />}
    </>
  );
}

render(<App />, document.getElementById("app"));
