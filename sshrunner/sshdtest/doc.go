// Package sshdtest runs a real OpenSSH sshd on loopback for tests, configured the way the
// local worker runs one per job: its own config, host key and authorized_keys in a private
// directory, listening on 127.0.0.1 on a free port, with internal-sftp.
//
// Typical use:
//
//	srv := sshdtest.Start(t)
//	c, err := sshrunner.Dial(ctx, srv.Target(), nil)
//
// and, for the OpenSSH clients, srv.OpenSSHArgs() with srv.ClientKeyPath and
// srv.KnownHostsPath, which pin the host key (StrictHostKeyChecking=yes).
//
// It needs /usr/sbin/sshd (Debian: openssh-server). Clients log in as the user running the
// test; as root, sshd also needs /run/sshd, which Start creates.
//
// Every server is stopped by its process id when the test ends, after checking that the id
// still names that server's sshd; nothing is ever stopped by name.
package sshdtest
