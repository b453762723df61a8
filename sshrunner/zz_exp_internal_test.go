package sshrunner

import (
	"os"
	"strconv"
)

func init() {
	if v, err := strconv.Atoi(os.Getenv("EXP_RBUF")); err == nil {
		readBufferSize = v
	}
}
