// The service's REST API as the dashboard calls it: same origin, the session cookie, and
// the header that marks a request as the dashboard's own (the service refuses a cookie
// without it on anything that changes state).

export class Unauthenticated extends Error {
  constructor() {
    super("signed out");
  }
}

export async function call(method, path, body) {
  const opts = {
    method,
    credentials: "same-origin",
    headers: { "X-Requested-With": "understudy-dashboard", Accept: "application/json" },
  };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) {
    throw new Unauthenticated();
  }
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: the status line says enough.
  }
  if (!r.ok) {
    throw new Error(data?.error?.message || `${r.status} ${r.statusText}`);
  }
  return data;
}

export const jobPath = (id) => `/api/v1/training/${encodeURIComponent(id)}`;
