// Package fakecloud imitates ONE cloud GPU API — RunPod (REST v2 plus the GraphQL calls
// used for spot pods) or Lambda Cloud (API v1) — on loopback, so that tests exercise the
// service's whole path against it: create, poll, dial with a pinned host key, upload over
// SFTP, run commands, tear down. It is written from the providers' documented shapes in
// ../shared/reference (providers.md and specs/).
//
// # Faithful
//
//   - Paths, methods, status codes and error envelopes: RunPod REST answers
//     application/problem+json {title, status, detail, errors?}; RunPod GraphQL answers
//     HTTP 200 with {data} or {data: null, errors: [{message}]}; Lambda answers {data} or
//     {error: {code, message, suggestion?}, field_errors?} with codes from its enum.
//   - Bearer authentication (Lambda also accepts Basic with the key as user name).
//   - RunPod create-body validation: unknown fields (top level and inside gpu), missing
//     name/image and bad types give 422 with an errors list; an unknown GPU type or a
//     broken cross-field rule gives 400; no capacity is a 400 told apart only by detail.
//   - State sequences: RunPod PROVISIONING → STARTING (after half the boot delay) →
//     RUNNING, stop → EXITED, the actions allowed per status (409 otherwise); Lambda
//     booting → active → terminating → terminated, and a terminated instance leaves the
//     list at once and answers 404 thirty seconds later. A machine leaves the API only once
//     its sshd and every process of its sessions have ended (a RunPod DELETE answers after
//     that, unless the slow-delete fault holds the pod up), so "gone" means stopped.
//   - Machines are real: each one is an OpenSSH sshd (package provider/sshd) on loopback,
//     set up only from what the create request carried — authorized keys from RunPod's
//     PUBLIC_KEY or Lambda's registered key plus cloud-config ssh_authorized_keys, the
//     host key from UNDERSTUDY_HOST_KEY or cloud-config ssh_keys.ed25519_private (else a
//     freshly generated one, trusted on first use only), and the lease settings of the
//     machine's dead-man's switch, which the fake enforces as the boot script would.
//     RunPod's sshd listens on 127.0.0.1 on a free port published as ssh.direct; each
//     Lambda instance gets its own loopback address 127.77.x.y with sshd on one fixed port
//     (Lambda's API has no port: clients dial 22).
//   - Faults that the real clouds show: create answering 500 although it created, no
//     capacity, 429 with Retry-After, slow deletion, spot preemption, a revoked key,
//     user_data refused, and Lambda's launch rate (one launch per interval).
//
// # Simplified
//
//   - One account, one API key, state in memory: a restarted fake knows no machines.
//   - The fake NEVER runs the request's start command (args/dockerArgs), user_data or any
//     other command from the request; it reads only the fields named above, and it only
//     stats the lease file (it never writes it). It touches nothing outside its directory
//     except through the sshd sessions that clients themselves open.
//   - Logins are as the user running the fake (root in the test containers), not RunPod's
//     root-in-a-container nor Lambda's ubuntu.
//   - RunPod: GPU pods only (a cpu body is refused with 400), no templates (templateId gives
//     404), no network volumes, no account SSH keys (startSsh has no effect), only 22/tcp is
//     published in runtime.ports; the catalogue has three GPU types and reports
//     availability only with include=AVAILABILITY&product=POD. GraphQL is not parsed: the
//     operation is recognised by its field name in the query text and every argument is
//     taken from variables.
//   - Lambda: three instance types in two regions, no file systems, no restart.
//   - Rate limits are faults (every second request) plus Lambda's launch interval; the
//     RateLimit headers RunPod sends on ordinary responses are not sent.
//
// GET /_fake/machines and GET /_fake/stats expose the fake's state to tests; they need no
// key and are never faulted.
package fakecloud
