package postgres

import "context"

// Setting reads a setting of the lead's own session.
func (l *Lease) Setting(ctx context.Context, name string) (string, error) {
	var v string
	err := l.conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v)
	return v, err
}

// CheckVersion is checkVersion, for the external tests.
var CheckVersion = checkVersion
